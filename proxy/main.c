#include <stdio.h>
int main(void) { puts("certmapd: under construction"); return 0; }
