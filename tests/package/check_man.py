"""The manual pages: certmapd(8) and certmapd.conf(5) render with groff and man
without a warning, and certmapd.conf(5) lists exactly the keys that
`certmapd --help-config` prints, under their sections, with their defaults.

usage: check_man.py CERTMAPD MAN_DIR   (MAN_DIR holds certmapd.8 and certmapd.conf.5)"""
import os
import re
import subprocess
import sys

BIN, MAN = sys.argv[1], sys.argv[2]
PAGES = [os.path.join(MAN, "certmapd.8"), os.path.join(MAN, "certmapd.conf.5")]
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL", msg)


def render_groff(page):
    """Plain text (no bold/underline sequences) at groff's width; stderr must be empty."""
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-P-cbou", page], capture_output=True,
                       text=True, timeout=60)
    if p.returncode != 0 or p.stderr.strip():
        fail(f"groff -man -Tutf8 -ww {page}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def render_man(page, width):
    env = dict(os.environ, MANWIDTH=str(width), MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    p = subprocess.run(["man", "--warnings=w", "-l", page], capture_output=True, text=True,
                       env=env, timeout=60)
    if p.returncode != 0 or p.stderr.strip():
        fail(f"MANWIDTH={width} man -l {page}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def table():
    """[(section, key, default or None)] in --help-config's order."""
    out = subprocess.run([BIN, "--help-config"], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"^\[([a-z_]+)(?: PATH)?\] (\w+) =(.*)$", line)
        if m:
            default = m.group(3).replace("(repeatable)", "").strip()
            rows.append((m.group(1), m.group(2),
                         None if default in ("", "(required)") else default))
    return rows


def sections_of(text):
    """{section: its text} for the KEYS section's "[name]" subsections."""
    keys = text.split("\nKEYS\n", 1)
    if len(keys) != 2:
        fail("certmapd.conf(5) has no KEYS section")
        return {}
    body = re.split(r"\n(?=[A-Z][A-Z ]+\n)", keys[1], maxsplit=1)[0]  # up to the next heading
    out = {}
    parts = re.split(r"^   \[([a-z_]+)(?: PATH)?\]$", body, flags=re.M)
    for name, chunk in zip(parts[1::2], parts[2::2]):
        out[name] = chunk
    return out


for page in PAGES:
    if not os.path.exists(page):
        fail(f"{page} was not built")
if failures:
    sys.exit(1)
for page in PAGES:
    for width in (60, 80, 120):
        render_man(page, width)
text = render_groff(PAGES[1])
render_groff(PAGES[0])
if "certmapd.conf" not in render_man(PAGES[0], 80):
    fail("certmapd(8) does not refer to certmapd.conf(5)")

rows = table()
if len(rows) < 40:
    fail(f"--help-config printed only {len(rows)} keys")
secs = sections_of(text)
for sec in dict.fromkeys(r[0] for r in rows):
    if sec not in secs:
        fail(f"certmapd.conf(5) has no [{sec}] subsection")
for sec, chunk in secs.items():
    # A long default breaks after ':' with no blank: join it back.
    flat = re.sub(r":\n +", ":", chunk)
    tags = re.findall(r"^       (\w+) =(.*)$", flat, flags=re.M)
    want = [(k, d) for s, k, d in rows if s == sec]
    if [k for k, _ in tags] != [k for k, _ in want]:
        fail(f"[{sec}]: the page lists {[k for k, _ in tags]}, --help-config {[k for k, _ in want]}")
        continue
    for (key, rest), (_, default) in zip(tags, want):
        shown = rest.replace(" (repeatable)", "").replace(" (required)", "").strip()
        if (default or "") != shown:
            fail(f"[{sec}] {key}: the page shows default {shown!r}, --help-config {default!r}")
n = sum(len(re.findall(r"^       \w+ =", re.sub(r":\n +", ":", c), flags=re.M))
        for c in secs.values())
print(f"{len(rows)} keys in --help-config, {n} in certmapd.conf(5)")
if n != len(rows):
    fail("the page and --help-config list different numbers of keys")
sys.exit(1 if failures else 0)
