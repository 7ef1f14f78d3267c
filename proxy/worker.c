/* placeholder: being written */
typedef int cm_placeholder_worker;
