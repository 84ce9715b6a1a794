# frozen_string_literal: true

require "bunny"
require "json"
require_relative "leveret/errors"
require_relative "leveret/wire"
require_relative "leveret/trace"
require_relative "leveret/log"
require_relative "leveret/strict_json"
require_relative "leveret/schemas"
require_relative "leveret/confirm_publisher"

# Publishes leveret tasks from a Ruby application (a Rails app, a script), as
# docs/contract.md §3 says.
#
#   message_id = TaskPublisher.publish_export_task(current_user.id, "xlsx")
#
# One Bunny connection per process (opened on first use, opened again in a
# forked child), one confirm-mode channel per thread (Bunny channels are not
# thread-safe). Every publish validates the payload against its JSON Schema
# first and sends nothing if it is invalid, publishes persistent and mandatory,
# waits for the broker's confirm, and returns the message id. A lost connection
# is retried with the same message id for up to RECONNECT_TIMEOUT seconds.
#
# Settings (TaskPublisher.configure, or the environment):
#   url          LEVERET_URL       (default amqp://localhost:5672/)
#   schemas_dir  LEVERET_SCHEMAS   (default: the repository's schemas/)
#   exchange     LEVERET_EXCHANGE  (default leveret.demo)
#   app_id       LEVERET_APP_ID    (optional: names the publishing program)
class TaskPublisher
  EXCHANGE = "leveret.demo"
  EXPORT_ROUTING_KEY = "export"
  EXPORT_TYPE = "demo.export"
  EXPORT_VERSION = 1
  RECONNECT_TIMEOUT = 30.0
  DEFAULT_URL = "amqp://localhost:5672/"
  DEFAULT_SCHEMAS = File.expand_path("../../../schemas", __dir__)

  # The payload does not match its schema; nothing was sent.
  class InvalidPayload < Leveret::SchemaViolation; end

  @lock = Mutex.new
  @instance = nil
  @settings = {}

  class << self
    # Publish a demo.export v1 task: a user asked for an export of their report.
    #
    # @param user_id [Integer] the user (an Integer >= 1)
    # @param format [String] "csv" or "xlsx"
    # @param headers [Hash] application headers; a "traceparent" (the request's,
    #   say) makes the task part of that trace
    # @return [String] the message id (a UUID), the task's idempotency key
    # @raise [InvalidPayload] the payload is invalid; nothing was sent
    # @raise [Leveret::Unroutable] no queue is bound for leveret.demo / export
    # @raise [Leveret::ExchangeMissing] the exchange does not exist (run `leveret topology apply`)
    # @raise [Leveret::NotConfirmed] the broker nacked it or closed the channel
    # @raise [Leveret::BrokerUnavailable] no broker within RECONNECT_TIMEOUT seconds
    def publish_export_task(user_id, format = "csv", correlation_id: nil, headers: {})
      publisher = instance
      publisher.publish(EXPORT_TYPE, EXPORT_VERSION, { "user_id" => user_id, "format" => format },
                        exchange: publisher.exchange, routing_key: EXPORT_ROUTING_KEY, correlation_id: correlation_id,
                        headers: headers)
    end

    # Set the URL, schema directory or app id (in a Rails initializer). Closes
    # the current connection, if any; the next publish opens one with these.
    def configure(url: nil, schemas_dir: nil, exchange: nil, app_id: nil, reconnect_timeout: nil)
      @lock.synchronize do
        @settings = { url: url, schemas_dir: schemas_dir&.to_s, exchange: exchange, app_id: app_id,
                      reconnect_timeout: reconnect_timeout }.compact
        drop_instance
      end
    end

    # This process's publisher.
    def instance
      @lock.synchronize do
        # A forked child (Puma, Unicorn, Sidekiq's forks) must not use its
        # parent's socket: forget the inherited publisher without closing it.
        @instance = nil if @instance && @instance.pid != Process.pid
        @instance ||= new(**@settings)
      end
    end

    # Close this process's connection (at exit, or in tests).
    def shutdown
      @lock.synchronize { drop_instance }
    end

    private

    def drop_instance
      @instance.close if @instance && @instance.pid == Process.pid
      @instance = nil
    end
  end

  attr_reader :pid, :exchange

  def initialize(url: ENV.fetch("LEVERET_URL", DEFAULT_URL), schemas_dir: ENV.fetch("LEVERET_SCHEMAS", DEFAULT_SCHEMAS),
                 exchange: ENV.fetch("LEVERET_EXCHANGE", EXCHANGE), app_id: ENV.fetch("LEVERET_APP_ID", nil),
                 reconnect_timeout: RECONNECT_TIMEOUT, max_size: Leveret::Wire::DEFAULT_MAX_SIZE, log: Leveret::Log.new)
    @url = url
    @exchange = exchange
    @schemas = Leveret::Schemas.load(schemas_dir)
    @app_id = app_id
    @reconnect_timeout = reconnect_timeout
    @max_size = max_size
    @log = log
    @pid = Process.pid
    @mutex = Mutex.new
    @connection = nil
    @publisher = nil
  end

  # Validate and publish any message type, with confirms.
  #
  # @param payload [Hash] the body (string or symbol keys)
  # @param message_id [String, nil] a UUID; fresh unless given (pass the same
  #   one to publish the same task again)
  # @param headers [Hash] application headers (leveret- ones are dropped). A
  #   valid "traceparent" among them is the parent of the message's own;
  #   without one the message starts a new trace
  # @return [String] the message id
  def publish(type, version, payload, exchange:, routing_key:, message_id: nil, correlation_id: nil, headers: {})
    body = JSON.generate(payload)
    if body.bytesize > @max_size
      raise Leveret::MessageTooLarge, "#{type} v#{version}: body is #{body.bytesize} bytes, over the limit of #{@max_size}"
    end

    begin
      # Validate what is sent, as a consumer will read it.
      @schemas.validate!(type, version, Leveret::StrictJSON.parse(body))
    rescue Leveret::SchemaViolation, Leveret::DecodeError => e
      raise InvalidPayload, "not published: #{e.message}"
    end
    headers = Leveret::Trace.merge(headers, Leveret::Trace.publish_headers(headers))
    props = Leveret::Wire.publish_properties(type: type, version: version, message_id: message_id,
                                              correlation_id: correlation_id, app_id: @app_id, headers: headers)
    send_confirmed(body, exchange, routing_key, props)
    props[:message_id]
  end

  # Close the connection (and every thread's channel).
  def close
    @mutex.synchronize do
      @publisher&.close
      @connection&.close if @connection&.open?
    rescue Bunny::Exception, IOError, SystemCallError, Timeout::Error
      nil
    ensure
      @publisher = nil
      @connection = nil
    end
  end

  private

  # Publish until confirmed; after a lost connection, publish again with the
  # same message id until RECONNECT_TIMEOUT runs out.
  def send_confirmed(body, exchange, routing_key, props)
    deadline = monotonic + @reconnect_timeout
    delay = 0.2
    begin
      publisher.publish(body, exchange: exchange, routing_key: routing_key, properties: props)
    rescue Leveret::ConnectionLost, Bunny::TCPConnectionFailed, Bunny::TCPConnectionFailedForAllHosts,
           Bunny::NetworkFailure, Bunny::ConnectionClosedError, SystemCallError, IOError => e
      if monotonic + delay >= deadline
        raise Leveret::BrokerUnavailable,
              "message #{props[:message_id]} not published: broker #{Leveret::Wire.redact(@url)} " \
              "unavailable for #{@reconnect_timeout}s (#{e.class}: #{Leveret::Wire.redact(e.message)})"
      end
      @log.warning("publisher.retrying", message_id: props[:message_id], error: e.class.name, retry_in: delay)
      sleep delay
      delay = [delay * 2, 2.0].min
      retry
    end
  end

  # The process's connection and its per-thread confirm channels, opened on
  # first use. Bunny recovers a dropped connection by itself; one that is
  # closed for good (or never opened) is opened again here.
  def publisher
    @mutex.synchronize do
      if @connection.nil? || @connection.closed?
        @connection = Bunny.new(
          Leveret::Wire.bunny_url(@url),
          automatically_recover: true,
          recover_from_connection_close: true,
          network_recovery_interval: 1.0,
          heartbeat: 30,
          connection_name: "leveret-ruby-publisher #{Socket.gethostname}:#{Process.pid}",
          logger: @log.to_logger
        )
        begin
          @connection.start
        rescue StandardError
          @connection = nil
          raise
        end
        @publisher = Leveret::ConfirmPublisher.new(@connection)
      end
      @publisher
    end
  end

  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

at_exit { TaskPublisher.shutdown }
