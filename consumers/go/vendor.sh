#!/bin/sh
# Populate vendor/ from the Go sources that Debian's -dev packages install under
# /usr/share/gocode/src, so that the worker builds with no module download:
#
#   apt-get install -y golang-go golang-github-rabbitmq-amqp091-go-dev \
#       golang-github-xeipuuv-gojsonschema-dev
#   ./vendor.sh && go build ./...      (go picks -mod=vendor because vendor/ exists)
#
# Every module below is listed in go.mod; the versions there are the ones
# Debian bookworm packages. vendor/ is generated, never committed.
set -eu

GOCODE=${GOCODE:-/usr/share/gocode/src}
here=$(cd "$(dirname "$0")" && pwd)
vendor="$here/vendor"

# module version  (one line each; the module's single package is its root)
modules='github.com/rabbitmq/amqp091-go v1.5.0 1.16
github.com/xeipuuv/gojsonpointer v0.0.0-20190905194746-02993c407bfb -
github.com/xeipuuv/gojsonreference v0.0.0-20180127040603-bd5ef7bd5415 -
github.com/xeipuuv/gojsonschema v1.2.0 -'

rm -rf "$vendor"
mkdir -p "$vendor"
manifest="$vendor/modules.txt"
: >"$manifest"

echo "$modules" | while read -r path version gover; do
	src="$GOCODE/$path"
	if [ ! -d "$src" ]; then
		echo "vendor.sh: $src is missing; install the Debian package that provides $path" >&2
		exit 1
	fi
	mkdir -p "$vendor/$path"
	# The package's own sources and licence; no tests, examples or sub-packages.
	find "$src" -maxdepth 1 -type f \( -name '*.go' ! -name '*_test.go' -o -name 'LICENSE*' \) \
		-exec cp {} "$vendor/$path/" \;
	echo "# $path $version" >>"$manifest"
	if [ "$gover" = "-" ]; then
		echo "## explicit" >>"$manifest"
	else
		echo "## explicit; go $gover" >>"$manifest"
	fi
	echo "$path" >>"$manifest"
done

echo "vendor.sh: vendored $(echo "$modules" | wc -l) modules from $GOCODE into $vendor" >&2
