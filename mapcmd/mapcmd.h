/* mapcmd/: `certmapd map`, the administrator's test of the certificate
 * policy and the mapping for one certificate, without serving. Above every
 * other module but proxy/, which only dispatches to it. */
#ifndef CM_MAPCMD_H
#define CM_MAPCMD_H

/* `certmapd map ARGS` (<argv>[0] is "map"): policy and mapping of one
 * certificate, explained step by step on stdout; <default_conf> when no -c.
 * Returns the exit status: 0 mapped, 1 denied, 2 error. */
int mapcmd_main(int argc, char **argv, const char *default_conf);

#endif
