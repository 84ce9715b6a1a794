# frozen_string_literal: true

# leveret for Ruby: a worker and a publisher that follow docs/contract.md with
# Bunny and json_schemer (both from Debian's packages).
require_relative "leveret/errors"
require_relative "leveret/wire"
require_relative "leveret/trace"
require_relative "leveret/log"
require_relative "leveret/strict_json"
require_relative "leveret/schemas"
require_relative "leveret/app"
require_relative "leveret/confirm_publisher"
require_relative "leveret/status"
require_relative "leveret/health"
require_relative "leveret/metrics"
require_relative "leveret/probe_server"
require_relative "leveret/worker"
require_relative "leveret/demo"
