# frozen_string_literal: true

module Leveret
  # Whether the worker is healthy: the pure judgement behind its probes, the
  # same rules as leveret/health.py. The worker reports what it sees
  # (connection up or down, the broker's count of consumers and of messages
  # waiting, each settled delivery, draining) and the probes ask. Every call
  # takes `now` (monotonic seconds), so the rules are tested with a clock of
  # the test's own. Thread-safe: handlers settle on the work pool's threads.
  #
  # Ready: connected, a consumer registered on each queue, and not stalled
  # (messages waiting for `stall_after` seconds with no delivery settled).
  # Live: ready, or unready for at most `grace` seconds. A draining worker is
  # unready but live.
  class Health
    STALL_AFTER = 300.0
    GRACE = 60.0

    # One probe's answer.
    Verdict = Struct.new(:ok, :reason) do
      def to_h = { status: ok ? "ok" : "failing", reason: reason }
    end

    # @param queues [Array<String>] the queues the worker consumes
    # @param stall_after [Numeric] seconds with messages waiting and none settled before it is stalled
    # @param grace [Numeric] seconds of being unready before it is no longer live
    # @param now [Numeric] the clock reading at creation
    def initialize(queues:, stall_after: STALL_AFTER, grace: GRACE, now: 0.0)
      @queues = queues.dup.freeze
      @stall_after = stall_after
      @grace = grace
      @connected = false
      @stopping = false
      @consumers = {}
      @waiting = {}
      # The progress clock runs only while there is work: it restarts when a
      # delivery settles, and when work is seen after the queues were seen empty.
      @progress_at = now
      @unready_since = now
      @mutex = Mutex.new
    end

    attr_reader :stall_after

    def connected? = @mutex.synchronize { @connected }

    def connection_up(now)
      change(now) do
        @connected = true
        @consumers = {}
        @progress_at = now
      end
    end

    def connection_down(now)
      change(now) do
        @connected = false
        @consumers = {}
      end
    end

    def draining(now)
      change(now) { @stopping = true }
    end

    # The broker's figures for the worker's queues, from a passive declare.
    #
    # @param consumers [Hash{String=>Integer}]
    # @param waiting [Hash{String=>Integer}]
    def checked(consumers, waiting, now)
      change(now) do
        had_work = work?
        @consumers = consumers.dup
        @waiting = waiting.dup
        @progress_at = now unless had_work
      end
    end

    # A delivery was settled (acked, retried or dead-lettered).
    def settled(now)
      change(now) { @progress_at = now }
    end

    # @return [Verdict] whether the worker can take work now
    def readiness(now) = @mutex.synchronize { judge(now) }

    # @return [Verdict] whether the worker is alive
    def liveness(now)
      @mutex.synchronize do
        ready = judge(now)
        update(now, ready)
        next Verdict.new(true, "") if ready.ok || @stopping || @unready_since.nil?

        since = now - @unready_since
        next Verdict.new(true, "") if since <= @grace

        Verdict.new(false, format("%<reason>s for %<since>.0fs (grace %<grace>.0fs)",
                                  reason: ready.reason, since: since, grace: @grace))
      end
    end

    private

    def change(now)
      @mutex.synchronize do
        yield
        update(now, judge(now))
      end
    end

    def judge(now)
      return Verdict.new(false, "the worker is shutting down") if @stopping
      return Verdict.new(false, "not connected to the broker") unless @connected

      missing = @queues.select { |q| @consumers.fetch(q, 0) < 1 }
      return Verdict.new(false, "no consumer registered on #{missing.join(', ')}") if missing.any?

      idle = now - @progress_at
      if work? && idle > @stall_after
        return Verdict.new(false, format("stalled: %<total>d message(s) waiting and none settled for %<idle>.0fs " \
                                         "(limit %<limit>.0fs)", total: @waiting.values.sum, idle: idle, limit: @stall_after))
      end

      Verdict.new(true, "")
    end

    def work? = @waiting.values.any?(&:positive?)

    def update(now, ready)
      if ready.ok
        @unready_since = nil
      elsif @unready_since.nil?
        @unready_since = now
      end
    end
  end
end
