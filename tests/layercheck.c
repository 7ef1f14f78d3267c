/* The layer check's program (tests/CMakeLists.txt): it does nothing; linking
 * it with one module's library whole is the check. */
int main(void)
{
    return 0;
}
