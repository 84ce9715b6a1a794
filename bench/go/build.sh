#!/bin/sh
# Build the Go baseline (bin/bench-go) offline: vendor/ is copied from the Go
# sources Debian's golang-github-rabbitmq-amqp091-go-dev installs under
# /usr/share/gocode/src (as consumers/go/vendor.sh does), and GOPROXY=off with
# -mod=vendor means no module is ever downloaded.
#
#   apt-get install -y golang-go golang-github-rabbitmq-amqp091-go-dev
#   bench/go/build.sh
set -eu

GOCODE=${GOCODE:-/usr/share/gocode/src}
here=$(cd "$(dirname "$0")" && pwd)
module=github.com/rabbitmq/amqp091-go
src="$GOCODE/$module"
if [ ! -d "$src" ]; then
	echo "build.sh: $src is missing; install golang-github-rabbitmq-amqp091-go-dev" >&2
	exit 1
fi
rm -rf "$here/vendor"
mkdir -p "$here/vendor/$module"
find "$src" -maxdepth 1 -type f \( -name '*.go' ! -name '*_test.go' -o -name 'LICENSE*' \) \
	-exec cp {} "$here/vendor/$module/" \;
printf '# %s v1.5.0\n## explicit; go 1.16\n%s\n' "$module" "$module" >"$here/vendor/modules.txt"
cd "$here"
GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off GO111MODULE=on go build -o bin/bench-go .
