"""Turns Debian's package catalog (`apt-cache dumpavail`) into JSON lines of item texts.

  python3 loadtest/debian_catalog.py [--limit N] [--out FILE]

Each line is {"id": "pkg:<name>", "title": <synopsis>, "text": "<synopsis>. <long description>",
"attributes": {"source": <source package>, "section": <section>, "installed_size": <KiB>}} for
one binary package (first occurrence of a name wins; order is the catalog's, so a run is
repeatable on one machine). Long descriptions come from apt's Translation-en lists, which
Debian's container images skip: fetch them once with
`apt-get update -o Acquire::Languages=en` (compose/dev does).
"""

import argparse
import glob
import json
import subprocess
import sys


def translations():
    """Package name -> long description, from apt's Translation-en lists."""
    long = {}
    for path in glob.glob("/var/lib/apt/lists/*_i18n_Translation-en*"):
        text = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", path], capture_output=True, text=True, check=True
        ).stdout
        for pkg in packages(text):
            if pkg.get("name") and pkg.get("long") and pkg["name"] not in long:
                long[pkg["name"]] = pkg["long"]
    return long


def packages(dump):
    pkg = {}
    field = None
    for line in dump.splitlines():
        if not line:
            if pkg:
                yield pkg
            pkg, field = {}, None
        elif line[0] in " \t":
            if field == "Description":
                body = line.strip()
                pkg["long"].append("" if body == "." else body)
        else:
            key, _, value = line.partition(":")
            field = key
            if key == "Package":
                pkg["name"] = value.strip()
            elif key == "Source":
                # "Source: foo" or "Source: foo (1.2-3)" when the versions differ.
                pkg["source"] = value.strip().split(" ")[0]
            elif key == "Section":
                pkg["section"] = value.strip()
            elif key == "Installed-Size":
                pkg["installed_size"] = value.strip()
            elif key in ("Description", "Description-en"):
                field = "Description"
                pkg["synopsis"] = value.strip()
                pkg["long"] = []
    if pkg:
        yield pkg


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--out", default="-")
    args = parser.parse_args()
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    long_descriptions = translations()
    if not long_descriptions:
        print("warning: no Translation-en lists under /var/lib/apt/lists: texts are synopses only "
              "(run `apt-get update -o Acquire::Languages=en` for the long descriptions)", file=sys.stderr)
    out = sys.stdout if args.out == "-" else open(args.out, "w")
    seen = set()
    n = 0
    for p in packages(dump):
        name = p.get("name")
        if not name or name in seen or not p.get("synopsis"):
            continue
        seen.add(name)
        long = " ".join(x for x in (p.get("long") or long_descriptions.get(name, [])) if x)
        text = p["synopsis"] + (". " + long if long else "")
        attributes = {"source": p.get("source") or name, "section": p.get("section", "")}
        if p.get("installed_size"):
            attributes["installed_size"] = p["installed_size"]
        line = {"id": f"pkg:{name}", "title": p["synopsis"], "text": text, "attributes": attributes}
        out.write(json.dumps(line) + "\n")
        n += 1
        if args.limit and n >= args.limit:
            break
    if out is not sys.stdout:
        out.close()
    print(f"{n} items", file=sys.stderr)


if __name__ == "__main__":
    main()
