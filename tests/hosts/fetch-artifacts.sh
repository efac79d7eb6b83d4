#!/bin/sh
# Test artifacts that no Debian archive carries, fetched once into .cache/artifacts with this
# machine's own clients. The scenarios pin their checksums or versions; the roles verify them.
set -eu
cd "$(dirname "$0")/../.."
dest=.cache/artifacts
mkdir -p "$dest"

es_version=5.6.16
if [ ! -s "$dest/elasticsearch-$es_version.zip" ]; then
  command -v mvn >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven
  }
  mvn -q dependency:copy \
    "-Dartifact=org.elasticsearch.distribution.zip:elasticsearch:$es_version:zip" \
    "-DoutputDirectory=$dest"
fi

# The mongodb role's test server (its secantusdb method): the pinned SecantusDB and its
# dependencies as wheels for the test hosts' Python (Debian 13: 3.13), fetched with the
# controller's pip and its own index configuration; the hosts install from these alone.
secantusdb_version=$(sed -n 's/^mongodb_secantusdb_version: "\(.*\)"$/\1/p' roles/mongodb/defaults/main.yml)
for python in ${SECANTUSDB_PYTHONS:-3.13}; do
  tag=cp$(echo "$python" | tr -d .)
  wheels="$dest/secantusdb-$secantusdb_version-wheels"
  if ! ls "$wheels"/secantusdb-$secantusdb_version-$tag-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --disable-pip-version-check --dest "$wheels" \
      --only-binary=:all: --python-version "$python" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 "secantusdb==$secantusdb_version"
  fi
done
echo "fetch-artifacts: $(ls "$dest" | tr '\n' ' ')"
