#!/usr/bin/env bash
# The Node, Ruby and Go workers in consumers/: install their dependencies, run
# their own test suites. A language whose toolchain is missing is skipped with
# a line saying how to install it, unless LEVERET_POLYGLOT=required (CI), where
# that is an error.
#
#   scripts/consumers.sh apt        apt-get install every toolchain (root; Debian)
#   scripts/consumers.sh install    npm ci for Node, the offline vendor + build for Go
#   scripts/consumers.sh test       node --test, rake test, go vet + go test
set -euo pipefail
cd "$(dirname "$0")/../consumers"

required=${LEVERET_POLYGLOT:-}

missing() {  # missing LANGUAGE HINT
  if [[ "$required" == required ]]; then
    echo "consumers: $1: $2 (LEVERET_POLYGLOT=required)" >&2
    exit 1
  fi
  echo "consumers: skipping $1: $2"
}

have_node() { command -v node >/dev/null && command -v npm >/dev/null; }
have_ruby() { command -v ruby >/dev/null && command -v rake >/dev/null \
  && ruby -e 'require "bunny"; require "json_schemer"; require "minitest"' 2>/dev/null; }
have_go() { command -v go >/dev/null && [[ -d /usr/share/gocode/src/github.com/rabbitmq/amqp091-go ]]; }

RUBY_HINT="apt-get install \$(cat consumers/ruby/apt-packages.txt)"
GO_HINT="apt-get install \$(cat consumers/go/apt-packages.txt)"

case "${1:-}" in
  apt)
    packages=$(cat ruby/apt-packages.txt go/apt-packages.txt | grep -v '^#' | sort -u)
    # Only what is not there yet, so a machine that has them needs no package index.
    wanted=()
    for p in $packages; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || wanted+=("$p")
    done
    if ((${#wanted[@]})); then
      echo "consumers: apt-get install ${wanted[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null
    else
      echo "consumers: every toolchain package is installed"
    fi
    ;;
  install)
    if have_node; then
      if [[ ! -f node/node_modules/.installed || node/package-lock.json -nt node/node_modules/.installed ]]; then
        npm ci --prefix node --no-audit --no-fund --loglevel=error
        touch node/node_modules/.installed
      fi
    else
      missing node "install Node.js 20 and npm"
    fi
    if have_go; then make --no-print-directory -C go build; else missing go "$GO_HINT"; fi
    have_ruby || missing ruby "$RUBY_HINT"
    ;;
  test)
    if have_node; then (cd node && npm test --silent); else missing node "install Node.js 20 and npm"; fi
    if have_ruby; then (cd ruby && rake test); else missing ruby "$RUBY_HINT"; fi
    if have_go; then make --no-print-directory -C go test; else missing go "$GO_HINT"; fi
    ;;
  *)
    echo "usage: $0 apt|install|test" >&2
    exit 2
    ;;
esac
