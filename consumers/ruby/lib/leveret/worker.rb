# frozen_string_literal: true

require "bunny"
require "socket"
require "timeout"

module Leveret
  # Consumes one work queue with Bunny and settles every delivery as
  # docs/contract.md §4 says.
  #
  # Handlers run on the consuming channel's Bunny work pool (`concurrency`
  # threads). A delivery is acked only after its handler returned. A failure is
  # copied to `<queue>.retry` (transient) or `<queue>.dead` (permanent) on the
  # calling thread's confirm channel, and the delivery is acked only once the
  # copy is confirmed, or rejected without requeue if it is not. A nacked copy
  # is sent again, each time on a new channel, for up to REPUBLISH_PATIENCE
  # seconds; the delivery stays unacked meanwhile.
  #
  # The main thread only waits: for SIGTERM/SIGINT, for Bunny's "recovery
  # completed" hook, and every CHECK_INTERVAL seconds to check that the queue
  # still has a consumer.
  class Worker
    CHECK_INTERVAL = 5.0
    CONNECT_TIMEOUT = 30.0
    # Seconds a failed delivery's copy is sent again while the broker nacks it
    # (a quorum queue refuses publishes for a while after its leader moved);
    # a copy still refused after this long is dead-lettered instead.
    REPUBLISH_PATIENCE = 30.0
    # The pause before the first resend of a nacked copy, doubling up to the most.
    REPUBLISH_PAUSE = 0.05
    REPUBLISH_PAUSE_MAX = 2.0

    # @param app [App] the queue and its handlers
    # @param url [String] the broker URL (its password never reaches a log line)
    # @param prefetch [Integer] unacked deliveries the broker may send ahead
    # @param concurrency [Integer] handlers running at once (Bunny work pool size)
    # @param grace [Numeric] seconds in-flight handlers get to finish on shutdown
    # @param max_attempts [Integer, nil] the queue's max_attempts, when known: a
    #   tracked job's transient failure on the last attempt then reports "failed"
    # @param check_interval [Numeric] seconds between passive declares of the queue
    # @param stall_after [Numeric] seconds with messages waiting and none settled before it is unready
    # @param health_file [String, nil] a file touched at each check while the worker is live
    # @param republish_patience [Numeric] seconds a nacked copy is sent again before the delivery is dead-lettered
    def initialize(app:, url:, prefetch: 8, concurrency: nil, grace: 30.0, max_attempts: nil, log: Log.new,
                   connect_timeout: CONNECT_TIMEOUT, check_interval: CHECK_INTERVAL,
                   stall_after: Health::STALL_AFTER, health_file: nil, republish_patience: REPUBLISH_PATIENCE)
      raise ConfigurationError, "prefetch must be a positive integer" unless prefetch.is_a?(Integer) && prefetch.positive?

      @app = app
      @url = url
      @prefetch = prefetch
      @concurrency = concurrency || prefetch
      raise ConfigurationError, "concurrency must be a positive integer" unless @concurrency.is_a?(Integer) && @concurrency.positive?

      @grace = grace
      unless max_attempts.nil? || (max_attempts.is_a?(Integer) && max_attempts.positive?)
        raise ConfigurationError, "max_attempts must be a positive integer"
      end

      @max_attempts = max_attempts
      @log = log
      @connect_timeout = connect_timeout
      @check_interval = check_interval
      @health_file = health_file
      @republish_patience = republish_patience
      # What the probes ask (Health) and what /metrics shows (Metrics).
      @health = Health.new(queues: [app.queue], stall_after: stall_after, now: monotonic)
      @metrics = Metrics.new
      @reported = "" # the readiness reason last logged: log changes, not every check
      @identity = Wire.failed_by(app.queue)
      @inflight = 0
      @inflight_mutex = Mutex.new
      @stopping = false
      @stop_requested = false
      @can_report = false # leveret.status exists (checked at start)
      @subscriptions = 0
      @wake_r, @wake_w = IO.pipe
    end

    attr_reader :identity, :health, :metrics

    # Run until SIGTERM or SIGINT (or #stop).
    #
    # @return [Integer] the exit status: 0 after a clean shutdown, 1 if the
    #   broker cannot be reached or the topology is missing
    def run(install_signal_handlers: true)
      previous = trap_signals if install_signal_handlers
      return(@stop_requested ? 0 : 1) unless connect

      verify_topology!
      @publisher = ConfirmPublisher.new(@connection)
      @status = Status::Reporter.new(publisher: @publisher, schemas: @app.schemas, log: @log)
      @connection.after_recovery_completed { wake("R") }
      start_consuming
      @log.info("worker.consuming", queue: @app.queue, prefetch: @prefetch, concurrency: @concurrency,
                                    types: @app.handlers.transform_values(&:versions), broker: broker)
      first_check
      wait_for_stop
    rescue TopologyMissing => e
      @log.error("worker.topology_missing", error: e.message)
      1
    ensure
      previous&.each { |signal, handler| trap(signal, handler || "DEFAULT") }
      close_connection
    end

    # Ask the worker to shut down gracefully (safe from a signal handler).
    def stop
      @stop_requested = true
      wake("T")
    end

    private

    # --- connection and topology ---------------------------------------------------

    def connect
      deadline = monotonic + @connect_timeout
      delay = 0.5
      begin
        @connection = Bunny.new(
          Wire.bunny_url(@url),
          automatically_recover: true,
          recover_from_connection_close: true,
          network_recovery_interval: 2.0,
          recovery_attempts: nil,
          heartbeat: 30,
          connection_name: "leveret-ruby-worker #{Socket.gethostname}:#{Process.pid}",
          logger: @log.to_logger
        )
        @connection.start
        true
      rescue Bunny::Exception, SystemCallError, IOError, Timeout::Error => e
        discard_connection
        if retryable?(e) && monotonic + delay < deadline && !@stop_requested
          @log.warning("worker.broker_unavailable", broker: broker, error: e.class.name, retry_in: delay)
          sleep delay
          delay = [delay * 2, 5.0].min
          retry
        end
        @log.error("worker.broker_unavailable", broker: broker, error: "#{e.class}: #{e.message}",
                                                hint: "is RabbitMQ running and LEVERET_URL right?")
        false
      end
    end

    # Refused credentials or an unknown vhost will not get better by waiting.
    def retryable?(error)
      !error.is_a?(Bunny::AuthenticationFailureError) &&
        !error.is_a?(Bunny::PossibleAuthenticationFailureError) &&
        !error.is_a?(Bunny::NotAllowedError) &&
        !error.is_a?(Bunny::AccessRefused)
    end

    def discard_connection
      @connection&.close(false)
    rescue StandardError
      nil
    ensure
      @connection = nil
    end

    # The contract's set-up: Q, Q.retry, Q.dead and Q.dlq must exist. Passive
    # declares only, each on its own channel (a 404 closes the channel).
    def verify_topology!
      missing = Wire.required(@app.queue).reject { |kind, name| exists?(kind, name) }
      # Status goes to leveret.status only if it exists: publishing to a
      # missing exchange would close the confirm channel copies are settled on.
      @can_report = exists?(:exchange, Status::EXCHANGE)
      tracked = @app.handlers.values.select(&:track).map(&:type)
      if !@can_report && tracked.any?
        @log.warning("status.exchange_missing", exchange: Status::EXCHANGE, tracked: tracked, hint: "status is not reported")
      end
      return if missing.empty?

      raise TopologyMissing,
            "missing on the broker: #{missing.map { |k, n| "#{k} #{n.inspect}" }.join(', ')}; " \
            "run `leveret topology apply`"
    end

    def exists?(kind, name)
      ch = @connection.create_channel
      kind == :queue ? ch.queue_declare(name, passive: true) : ch.exchange_declare(name, "direct", passive: true)
      true
    rescue Bunny::NotFound
      false
    ensure
      ch.close if ch&.open?
    end

    # --- consuming -------------------------------------------------------------------

    # Open the consuming channel (manual acks, prefetch) and subscribe.
    def start_consuming
      # The work pool's shutdown timeout only bounds Bunny's own wait in
      # basic.cancel; the grace period is enforced in #shutdown.
      ch = @connection.create_channel(nil, @concurrency, false, @grace)
      ch.basic_qos(@prefetch)
      ch.on_error { |_ch, close| @log.error("worker.channel_error", error: "#{close.reply_code} #{close.reply_text}") }
      ch.on_uncaught_exception { |e, _consumer| @log.error("worker.uncaught", error: "#{e.class}: #{e.message}") }
      @consume_channel = ch
      subscribe(ch)
    end

    def subscribe(ch)
      @subscriptions += 1
      # no_declare: never declared, not even passively on recovery.
      queue = Bunny::Queue.new(ch, @app.queue, no_declare: true)
      @consumer = queue.subscribe(
        manual_ack: true,
        block: false,
        consumer_tag: "leveret-ruby-#{Socket.gethostname}-#{Process.pid}-#{@subscriptions}",
        on_cancellation: proc { wake("C") }
      ) { |info, props, body| on_delivery(ch, info, props, body) }
    end

    # Runs on a work-pool thread, once per delivery.
    def on_delivery(channel, info, props, body)
      track(+1)
      begin
        if @stopping
          # Shutdown has begun: hand it back untouched, for another consumer.
          settle_quietly { channel.reject(info.delivery_tag, true) }
          @log.info("message.requeued", message_id: props.message_id, queue: @app.queue, outcome: "requeued")
          return
        end
        @metrics.received(@app.queue)
        started = monotonic
        delivery = to_delivery(info, props, body)
        # Read once: every message sent for this delivery continues one trace.
        trace = Trace.of(delivery.headers)
        copy = nil
        version = nil
        tracked = batch_member?(delivery)
        status = ->(state, **fields) { @status.report(delivery, state, trace: trace, **fields) }
        begin
          handler, version, payload = @app.resolve(delivery)
          tracked ||= handler.track && @can_report
          ctx = Context.new(delivery: delivery, version: version, queue: @app.queue, publisher: @publisher,
                            schemas: @app.schemas, log: @log, status: tracked ? status : nil, trace: trace)
          status.call("started") if tracked
          result = Timeout.timeout(handler.timeout, HandlerTimeout,
                                   "handler #{handler.name} exceeded its timeout of #{handler.timeout}s") do
            handler.callable.call(payload, ctx)
          end
          # Before the ack: a crash in between repeats the task, never leaves a
          # finished job looking unfinished.
          status.call("succeeded", result: result.is_a?(String) ? result : nil) if tracked
        rescue SignalException, SystemExit
          raise
        rescue Exception => e # rubocop:disable Lint/RescueException -- every failure is settled, never raised
          copy = Wire.failure(delivery, @app.queue, e, consumer: @identity)
        end
        outcome = settle(channel, info.delivery_tag, props, body, copy)
        # After the copy was confirmed and the delivery settled. The worker does
        # not know the retry delays: no next_attempt_at. A transient failure on
        # the last attempt (which the broker sends on to Q.dlq) reads "failed"
        # when max_attempts is known, else "retrying".
        if tracked && copy
          case outcome
          when "retry_scheduled"
            if @max_attempts && delivery.attempt >= @max_attempts
              status.call("failed", reason: copy.reason, error: copy.error)
            else
              status.call("retrying", error: copy.error)
            end
          when "dead_lettered" then status.call("failed", reason: copy.reason, error: copy.error)
          end
        end
        @health.settled(monotonic)
        @metrics.settled(@app.queue, delivery.type, outcome, monotonic - started)
        report(delivery, trace, version || delivery.version, copy, outcome, monotonic - started)
      ensure
        track(-1)
      end
    end

    # A batch member reports its end, tracked or not (even when it is invalid),
    # when leveret.status exists.
    def batch_member?(delivery)
      return false unless Status.batch_id(delivery)
      return true if @can_report

      @log.error("status.batch_member_unreported", message_id: delivery.message_id,
                                                   hint: "no #{Status::EXCHANGE.inspect} exchange: apply a tracked app's topology")
      false
    end

    def to_delivery(info, props, body)
      Wire::Delivery.new(
        body: body,
        exchange: info.exchange.to_s,
        routing_key: info.routing_key.to_s,
        message_id: props.message_id,
        type: props.type,
        content_type: props.content_type,
        correlation_id: props.correlation_id,
        redelivered: info.redelivered,
        headers: props.headers || {}
      )
    end

    # Ack, or publish the copy, wait for its confirm, then ack (contract §4,
    # steps 7 to 9).
    #
    # @return [String] the outcome
    def settle(channel, tag, props, body, copy)
      if copy.nil?
        channel.ack(tag)
        return "processed"
      end

      began = monotonic
      begin
        republish(body, props, copy, deadline: began + @republish_patience)
      rescue ConnectionLost => e
        # The delivery cannot be settled on a dead connection: the broker will
        # redeliver it (and the copy may exist too; handlers are idempotent).
        @log.warning("message.republish_failed", message_id: props.message_id, exchange: copy.exchange, error: e.message)
        return "redelivery_pending"
      rescue PublishError => e
        # Never ack a message whose copy the broker did not take: rejecting it
        # sends it down Q's own dead-letter exchange, Q.dead, instead.
        @log.error("message.republish_failed", message_id: props.message_id, exchange: copy.exchange, error: e.message,
                                               refused_for: (monotonic - began).round(3))
        channel.reject(tag, false)
        return "dead_lettered"
      end
      channel.ack(tag)
      copy.outcome
    rescue Bunny::Exception, IOError, SystemCallError, Timeout::Error => e
      @log.warning("message.settle_failed", message_id: props.message_id, error: "#{e.class}: #{e.message}")
      "redelivery_pending"
    end

    # Publish a failed delivery's copy, sending it again while the broker nacks
    # it: after a pause (doubling), on a new channel (the publisher retires a
    # nacked one). The first nack is logged, once per delivery.
    #
    # @raise [Nacked] still nacked at `deadline`
    # @raise [PublishError] returned, channel closed, connection lost: at once
    def republish(body, props, copy, deadline:)
      properties = Wire.copy_properties(props.to_hash, copy.headers)
      pause = REPUBLISH_PAUSE
      refusals = 0
      begin
        @publisher.publish(body, exchange: copy.exchange, routing_key: copy.routing_key, properties: properties)
      rescue Nacked
        now = monotonic
        raise if now + pause > deadline

        if refusals.zero? # once a delivery: the outcome's line says how it ended
          @log.warning("message.republish_refused", message_id: props.message_id, exchange: copy.exchange,
                                                    sending_again_for: (deadline - now).round(3))
        end
        refusals += 1
        sleep pause
        pause = [pause * 2, REPUBLISH_PAUSE_MAX].min
        retry
      end
    end

    # The one log line of a settled delivery.
    def report(delivery, trace, version, copy, outcome, duration)
      fields = {
        message_id: delivery.message_id, trace_id: trace.trace_id, queue: @app.queue, type: delivery.type, version: version,
        attempt: delivery.attempt, outcome: outcome, duration_ms: (duration * 1000).round(2)
      }
      fields.merge!(reason: copy.reason, error: copy.error) if copy
      level = { "processed" => :info, "dead_lettered" => :error }.fetch(outcome, :warning)
      @log.public_send(level, "message.#{outcome}", **fields)
    end

    def settle_quietly
      yield
    rescue Bunny::Exception, IOError, SystemCallError, Timeout::Error
      nil
    end

    def track(delta) = @inflight_mutex.synchronize { @inflight += delta }

    def inflight = @inflight_mutex.synchronize { @inflight }

    # --- the main thread ---------------------------------------------------------------

    def wait_for_stop
      loop do
        ready = IO.select([@wake_r], nil, nil, @check_interval)
        events = ready ? @wake_r.read_nonblock(1024, exception: false).to_s : ""
        return shutdown if @stop_requested

        if events.include?("R")
          @log.info("worker.recovered", queue: @app.queue, broker: broker)
          recovered
        end
        @log.warning("worker.consumer_cancelled", queue: @app.queue) if events.include?("C")
        return 1 unless ensure_consuming

        health_tick
      end
    end

    # Readiness from the start, not one check interval later.
    def first_check
      connection_state
      consumer_count
      health_tick
    rescue Bunny::Exception, IOError, SystemCallError, Timeout::Error, RuntimeError => e
      @log.warning("worker.check_failed", error: "#{e.class}: #{e.message}")
    end

    # Log a change of readiness, and touch the health file while live.
    def health_tick
      now = monotonic
      ready = @health.readiness(now)
      live = @health.liveness(now)
      @metrics.ready = ready.ok
      if ready.reason != @reported
        if ready.ok
          @log.info("worker.ready", queue: @app.queue)
        else
          @log.warning("worker.unready", queue: @app.queue, reason: ready.reason, live: live.ok)
        end
        @reported = ready.reason
      end
      File.write(@health_file, format("%.3f", Time.now.to_f)) if @health_file && live.ok
    rescue SystemCallError, IOError => e
      @log.warning("worker.health_file_failed", path: @health_file, error: e.message)
    end

    # Bunny reconnected (its recovery is the worker's only way back): count
    # it, even if no check saw the connection down.
    def recovered
      @health.connection_up(monotonic)
      @metrics.connected(true, reconnect: true)
    end

    # Tell Health and Metrics when the connection came up or went down.
    def connection_state
      open = @connection&.open? || false
      return if open == @health.connected?

      if open
        @health.connection_up(monotonic)
        @metrics.connected(true)
      else
        @health.connection_down(monotonic)
        @metrics.connected(false)
      end
    end

    # After a recovery, and every few seconds: ask the broker whether the queue
    # still has a consumer. A reconnect that leaves none is a silent failure.
    #
    # @return [Boolean] false if the queue no longer exists
    def ensure_consuming
      connection_state
      return true unless @connection.open?

      count = consumer_count
      return true if count.positive?

      @log.error("worker.consumers_lost", queue: @app.queue)
      # Consume again: on the same channel if it is still open (its in-flight
      # deliveries can still be settled), else on a new one.
      @consume_channel&.open? ? subscribe(@consume_channel) : start_consuming
      @log.info("worker.resumed", queue: @app.queue)
      true
    rescue Bunny::NotFound
      @log.error("worker.topology_missing",
                 error: "queue #{@app.queue.inspect} no longer exists; run `leveret topology apply`")
      false
    rescue Bunny::Exception, IOError, SystemCallError, Timeout::Error, RuntimeError => e
      # RuntimeError: Bunny's "this connection is not open", mid-recovery. The
      # next check (or the recovery hook) tries again.
      @log.warning("worker.check_failed", error: "#{e.class}: #{e.message}")
      true
    end

    # A passive declare: the broker's count of consumers, and of messages waiting.
    def consumer_count
      @check_channel = nil unless @check_channel&.open?
      @check_channel ||= @connection.create_channel
      ok = @check_channel.queue_declare(@app.queue, passive: true)
      @health.checked({ @app.queue => ok.consumer_count }, { @app.queue => ok.message_count }, monotonic)
      @metrics.checked(@app.queue, ok.consumer_count, ok.message_count)
      ok.consumer_count
    end

    # The contract's shutdown: basic.cancel, let in-flight handlers finish and
    # settle within the grace period, close the connection (anything unsettled
    # returns to the queue).
    def shutdown
      @stopping = true
      @health.draining(monotonic)
      deadline = monotonic + @grace
      @log.info("worker.draining", queue: @app.queue, in_flight: inflight, grace: @grace)
      # Bunny's basic.cancel waits for cancel-ok, then for its work pool; run it
      # aside so that the grace period stays this method's to enforce.
      canceller = Thread.new do
        @consumer.cancel if @consume_channel&.open? && @connection.open?
      rescue Bunny::Exception, IOError, SystemCallError, Timeout::Error => e
        @log.warning("worker.cancel_failed", error: "#{e.class}: #{e.message}")
      end
      forced = false
      until drained?(canceller)
        if monotonic >= deadline
          @log.warning("worker.grace_expired", unfinished: inflight)
          break
        end
        if IO.select([@wake_r], nil, nil, 0.05) && @wake_r.read_nonblock(1024, exception: false).to_s.include?("T")
          @log.warning("worker.forced", unfinished: inflight)
          forced = true
          break
        end
      end
      close_connection
      canceller.kill if canceller.alive?
      @log.info("worker.stopped", queue: @app.queue)
      forced ? 1 : 0
    end

    # No handler running, and the cancel went through (no new delivery can come).
    def drained?(canceller)
      return false unless inflight.zero?

      !canceller.alive? || !(@consume_channel&.open? && @consume_channel.any_consumers?)
    end

    def close_connection
      return unless @connection

      @publisher&.close
      @connection.close if @connection.open?
    rescue Bunny::Exception, IOError, SystemCallError, Timeout::Error
      nil
    ensure
      @connection = nil
      connection_state
    end

    # --- plumbing ---------------------------------------------------------------------

    def trap_signals
      %w[TERM INT].to_h { |signal| [signal, trap(signal) { stop }] }
    end

    # Wake the main thread. Safe in a trap handler: no mutex, no blocking.
    def wake(event)
      @wake_w.write_nonblock(event, exception: false)
    end

    def broker = Wire.redact(@url)

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
