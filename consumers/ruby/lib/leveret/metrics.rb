# frozen_string_literal: true

module Leveret
  # The worker's Prometheus metrics, rendered by hand in the text exposition
  # format: the names, labels and meaning of leveret/metrics.py, so the alerts
  # in docs/prometheus/alerts.yml hold for every language. Thread-safe.
  class Metrics
    # Handler durations in seconds: from a millisecond to the five-minute export.
    DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300].freeze
    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def initialize
      @mutex = Mutex.new
      @messages = Hash.new(0) # [queue, type, outcome] => count
      @durations = {} # [queue, type] => {buckets:, sum:, count:}
      @in_flight = Hash.new(0)
      @waiting = {}
      @consumers = {}
      @connected = false
      @ready = false
      @reconnects = 0
    end

    def received(queue) = @mutex.synchronize { @in_flight[queue] += 1 }

    # One settled delivery: its outcome, and seconds from delivery to settlement.
    def settled(queue, type, outcome, seconds)
      type = "unknown" if type.nil? || type.empty?
      @mutex.synchronize do
        @messages[[queue, type, outcome]] += 1
        h = (@durations[[queue, type]] ||= { buckets: Array.new(DURATION_BUCKETS.size, 0), sum: 0.0, count: 0 })
        DURATION_BUCKETS.each_with_index { |bound, i| h[:buckets][i] += 1 if seconds <= bound }
        h[:sum] += seconds
        h[:count] += 1
        @in_flight[queue] = [@in_flight[queue] - 1, 0].max
      end
    end

    def checked(queue, consumers, waiting)
      @mutex.synchronize do
        @consumers[queue] = consumers
        @waiting[queue] = waiting
      end
    end

    # leveret_worker_connected; a connection made again after one was lost counts a reconnect.
    def connected(up, reconnect: false)
      @mutex.synchronize do
        @connected = up
        @reconnects += 1 if up && reconnect
      end
    end

    def ready=(value)
      @mutex.synchronize { @ready = value }
    end

    # @return [String] every metric in the text exposition format
    def render
      @mutex.synchronize do
        out = []
        family(out, "leveret_messages_total", "Deliveries settled, by queue, message type and outcome.", "counter")
        @messages.sort.each do |(queue, type, outcome), n|
          out << sample("leveret_messages_total", n, queue: queue, type: type, outcome: outcome)
        end
        family(out, "leveret_handler_duration_seconds", "Time from delivery to settlement, handler included.", "histogram")
        @durations.sort.each do |(queue, type), h|
          DURATION_BUCKETS.each_with_index do |bound, i|
            out << sample("leveret_handler_duration_seconds_bucket", h[:buckets][i], queue: queue, type: type, le: value(bound))
          end
          out << sample("leveret_handler_duration_seconds_bucket", h[:count], queue: queue, type: type, le: "+Inf")
          out << sample("leveret_handler_duration_seconds_sum", h[:sum], queue: queue, type: type)
          out << sample("leveret_handler_duration_seconds_count", h[:count], queue: queue, type: type)
        end
        family(out, "leveret_messages_in_flight", "Deliveries received and not yet settled.", "gauge")
        @in_flight.sort.each { |queue, n| out << sample("leveret_messages_in_flight", n, queue: queue) }
        family(out, "leveret_reconnects_total", "Connections to the broker made again after one was lost.", "counter")
        out << sample("leveret_reconnects_total", @reconnects)
        family(out, "leveret_worker_connected", "1 while connected to the broker.", "gauge")
        out << sample("leveret_worker_connected", @connected ? 1 : 0)
        family(out, "leveret_worker_ready", "1 while the worker's readiness probe passes.", "gauge")
        out << sample("leveret_worker_ready", @ready ? 1 : 0)
        family(out, "leveret_queue_messages", "Messages ready in a queue, as the broker last reported them.", "gauge")
        @waiting.sort.each { |queue, n| out << sample("leveret_queue_messages", n, queue: queue, role: "work") }
        family(out, "leveret_queue_consumers", "Consumers of a queue, as the broker last reported them.", "gauge")
        @consumers.sort.each { |queue, n| out << sample("leveret_queue_consumers", n, queue: queue, role: "work") }
        "#{out.join("\n")}\n"
      end
    end

    private

    def family(out, name, help, type)
      out << "# HELP #{name} #{help}" << "# TYPE #{name} #{type}"
    end

    def sample(name, number, **labels)
      return "#{name} #{value(number)}" if labels.empty?

      pairs = labels.map { |k, v| %(#{k}="#{escape(v)}") }.join(",")
      "#{name}{#{pairs}} #{value(number)}"
    end

    def escape(text) = text.to_s.gsub("\\", "\\\\\\\\").gsub("\n", "\\n").gsub('"', '\\"')

    # Integers as 1.0, the way the Python client writes them.
    def value(number) = number.to_f.to_s
  end
end
