#!/bin/sh
# Test artifacts that no Debian archive carries, fetched once into .cache/artifacts with this
# machine's own clients. The scenarios pin their checksums; the roles verify them.
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
echo "fetch-artifacts: $(ls "$dest" | tr '\n' ' ')"
