#!/usr/bin/env ruby
# frozen_string_literal: true

# The leveret Ruby worker: consumes LEVERET_QUEUE and handles demo.export
# (v1, v2) and leveret.conformance (v1), following docs/contract.md.
#
#   LEVERET_URL       broker URL (default amqp://localhost:5672/)
#   LEVERET_QUEUE     work queue (default leveret.demo.tasks)
#   LEVERET_SCHEMAS   JSON Schema directory (default: the repository's schemas/)
#   LEVERET_PREFETCH  unacked deliveries the broker may send ahead (default 8)
#   LEVERET_CONCURRENCY  handlers at once (default: the prefetch)
#   LEVERET_GRACE     seconds in-flight handlers get on SIGTERM (default 30)
#   LEVERET_MAX_ATTEMPTS  the queue's max_attempts (optional): with it, a tracked
#                     job's transient failure on the last attempt reports
#                     "failed", not "retrying"
#   LEVERET_HTTP_PORT serve GET /livez, /readyz and /metrics on this port (unset: no server)
#   LEVERET_HTTP_HOST the address to serve them on (default 127.0.0.1; 0.0.0.0 in a container)
#   LEVERET_STALL_AFTER  seconds messages may wait with none settled before the worker is unready (default 300)
#   LEVERET_CHECK_INTERVAL  seconds between passive declares of the queue (default 5)
#   LEVERET_HEALTH_FILE  a file touched at each check while the worker is live
#   LEVERET_REPUBLISH_PATIENCE  seconds a nacked retry or dead-letter copy is sent
#                     again before the delivery is dead-lettered (default 30)
#   LEVERET_LOG_LEVEL debug, info, warning or error (default info)
#
# Logs are JSON lines on stderr. Exit status: 0 after SIGTERM/SIGINT and a clean
# drain, 1 if the broker or the topology is missing, 2 for bad settings.

$LOAD_PATH.unshift(File.expand_path("lib", __dir__))
require "leveret"

def setting(name, default)
  value = ENV.fetch(name, "").strip
  value.empty? ? default : value
end

def positive_integer(name, default)
  raw = setting(name, default.to_s)
  Integer(raw, 10).tap { |n| raise ArgumentError unless n.positive? }
rescue ArgumentError
  raise Leveret::ConfigurationError, "#{name} must be a positive integer, got #{raw.inspect}"
end

def positive_number(name, default)
  raw = setting(name, default.to_s)
  Float(raw).tap { |n| raise ArgumentError unless n.positive? && n.finite? }
rescue ArgumentError
  raise Leveret::ConfigurationError, "#{name} must be a positive number of seconds, got #{raw.inspect}"
end

def port_number(name)
  raw = setting(name, nil)
  return nil if raw.nil?

  Integer(raw, 10).tap { |n| raise ArgumentError unless n.between?(0, 65_535) }
rescue ArgumentError
  raise Leveret::ConfigurationError, "#{name} must be a port number (0-65535), got #{raw.inspect}"
end

log = Leveret::Log.new
begin
  url = setting("LEVERET_URL", "amqp://localhost:5672/")
  queue = setting("LEVERET_QUEUE", "leveret.demo.tasks")
  schemas = Leveret::Schemas.load(setting("LEVERET_SCHEMAS", File.expand_path("../../schemas", __dir__)))
  prefetch = positive_integer("LEVERET_PREFETCH", 8)
  concurrency = positive_integer("LEVERET_CONCURRENCY", prefetch)
  grace = Float(setting("LEVERET_GRACE", "30"))
  max_attempts = setting("LEVERET_MAX_ATTEMPTS", nil) && positive_integer("LEVERET_MAX_ATTEMPTS", nil)
  http_port = port_number("LEVERET_HTTP_PORT")
  http_host = setting("LEVERET_HTTP_HOST", "127.0.0.1")

  app = Leveret::App.new(queue: queue, schemas: schemas)
  Leveret::Demo.register(app)
  worker = Leveret::Worker.new(app: app, url: url, prefetch: prefetch, concurrency: concurrency,
                               grace: grace, max_attempts: max_attempts, log: log,
                               stall_after: positive_number("LEVERET_STALL_AFTER", Leveret::Health::STALL_AFTER),
                               check_interval: positive_number("LEVERET_CHECK_INTERVAL", Leveret::Worker::CHECK_INTERVAL),
                               health_file: setting("LEVERET_HEALTH_FILE", nil),
                               republish_patience: positive_number("LEVERET_REPUBLISH_PATIENCE",
                                                                   Leveret::Worker::REPUBLISH_PATIENCE))
  unless http_port.nil?
    probes = Leveret::ProbeServer.new(health: worker.health, metrics: worker.metrics, host: http_host, port: http_port)
    log.info("worker.probes_listening", host: http_host, port: probes.start)
  end
rescue Leveret::ConfigurationError, ArgumentError, JSON::ParserError => e
  log.error("worker.configuration_error", error: e.message)
  exit 2
end

exit worker.run
