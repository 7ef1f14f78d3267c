/* The KEYS section of certmapd.conf(5), in roff, written from the key table
 * (certmapd --help-config=man): the manual page is generated at build time
 * from the same rows as the loader, so that it cannot drift from the code. */
#include <stdio.h>

#include "conf/internal.h"

/* Writes <s> as roff text on the current line: backslashes become \e, '-'
 * becomes \- (a minus, so that names and ranges copy as typed), and a ':' is
 * followed by \: so that a long OpenSSL list may break there. */
static void roff_text(FILE *out, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\')
            fputs("\\e", out);
        else if (*s == '-')
            fputs("\\-", out);
        else if (*s == ':')
            fputs(":\\:", out);
        else
            fputc(*s, out);
    }
}

/* One text line: \& first, so that a value starting with '.' or '\'' is
 * never read as a request. */
static void roff_line(FILE *out, const char *prefix, const char *s, const char *suffix)
{
    fputs("\\&", out);
    roff_text(out, prefix);
    roff_text(out, s);
    roff_text(out, suffix);
    fputc('\n', out);
}

static void print_key(FILE *out, const struct conf_key *k)
{
    const char *def = k->flags & CK_REQUIRED ? NULL : k->def;
    char range[80];

    /* An indent narrower than any tag: the description always starts on its own line. */
    fputs(".TP 4\n\\fB", out);
    roff_text(out, k->name);
    fputs("\\fR =", out);
    if (def != NULL) {
        fputs(" \\fI", out);
        roff_text(out, def);
        fputs("\\fR", out);
    }
    if (k->flags & CK_REQUIRED)
        fputs(" (required)", out);
    if (k->flags & CK_REPEATABLE)
        fputs(" (repeatable)", out);
    fputc('\n', out);
    conf_key_range(k, range, sizeof range);
    roff_line(out, "", k->help, "");
    if (range[0] != '\0') {
        fputs(".br\n", out);
        roff_line(out, "Bounds:", range, "");
    }
    fputs(".br\n", out);
    roff_line(out, "IIS: ", k->iis, "");
}

void conf_print_keys_man(void *fp)
{
    FILE *out = fp;

    /* Ragged right, no hyphenation: a long OpenSSL list cannot be spread over a
     * justified line, and a key name must read as written. */
    fputs(".na\n.nh\n", out);
    for (int s = SEC_NONE + 1; s < SEC_MAX; s++) {
        bool any = false;
        for (size_t i = 0; i < conf_n_keys; i++) {
            if (conf_keys[i].sec != (enum conf_section)s)
                continue;
            if (!any) {
                fprintf(out, ".SS \"[%s%s]\"\n", conf_section_name((enum conf_section)s),
                        s == SEC_LOCATION ? " PATH" : "");
                any = true;
            }
            print_key(out, &conf_keys[i]);
        }
    }
    fputs(".ad\n.hy\n", out);
}
