#!/usr/bin/env bash
# Prints the directory holding the jars of a server pom in tests/servers,
# downloading them from Maven Central first if they are not cached yet:
#   tests/servers/jars.sh NAME     (reads NAME/pom.xml and its NAME.version)
# The cache is ~/.cache/tessera/NAME-<version>/lib, outside the clone; two
# servers starting at once on a fresh machine download once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=$1
version=$(sed -n "s:.*<$name.version>\(.*\)</$name.version>.*:\1:p" "$here/$name/pom.xml")
lib=${HOME:-/root}/.cache/tessera/$name-$version/lib
mkdir -p "$lib"
exec 9>"$lib/../download.lock"
flock 9
if [ ! -f "$lib/.complete" ]; then
  mvn -q -f "$here/$name/pom.xml" dependency:copy-dependencies -DoutputDirectory="$lib" >&2
  touch "$lib/.complete"
fi
echo "$lib"
