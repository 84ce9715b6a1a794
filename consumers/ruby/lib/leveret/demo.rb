# frozen_string_literal: true

module Leveret
  # The handlers of the demo queue (leveret.demo.tasks): the same two types that
  # leveret's Python demo app handles, so either worker can consume the queue.
  module Demo
    # The failure a conformance task asks for (a transient one).
    class ConformanceFailure < StandardError; end

    RECEIPT_TYPE = "leveret.conformance.receipt"

    module_function

    # Register both handlers on an app.
    def register(app)
      app.handle("demo.export", versions: [1, 2], track: true) { |payload, ctx| export(payload, ctx) }
      app.handle("leveret.conformance", versions: [1]) { |payload, ctx| conformance(payload, ctx) }
      app
    end

    # demo.export v1 and v2, tracked: pretend to write the export in two
    # parts, reporting progress after each, log a line and return a reference
    # to the result.
    def export(payload, ctx)
      columns = payload["columns"] || %w[id name total]
      format = payload.fetch("format", "csv")
      [1, 2].each do |part|
        sleep 0.025
        ctx.progress(part * 50, "wrote part #{part} of 2")
      end
      ctx.log.info("demo.export_written",
                   message_id: ctx.message_id, version: ctx.version, user_id: payload["user_id"],
                   format: format, columns: columns)
      "exports/#{ctx.message_id}.#{format}"
    end

    # leveret.conformance v1, as docs/contract.md §8 says: sleep `sleep_ms`,
    # fail while the attempt number is at most `fail_times`, otherwise send a
    # receipt (when `receipt_exchange` is set); returning acks the task.
    def conformance(payload, ctx)
      sleep_ms = payload.fetch("sleep_ms", 0)
      sleep(sleep_ms / 1000.0) if sleep_ms.positive?
      fail_times = payload.fetch("fail_times", 0)
      if ctx.attempt <= fail_times
        raise ConformanceFailure, "failing on purpose: attempt #{ctx.attempt} of #{fail_times}"
      end

      exchange = payload["receipt_exchange"]
      return if exchange.nil?

      ctx.publish(RECEIPT_TYPE, 1,
                  { "message_id" => ctx.message_id, "attempt" => ctx.attempt, "consumer" => "ruby" },
                  exchange: exchange, routing_key: payload["receipt_routing_key"] || "")
      nil # no result to report: the receipt's message id is not one
    end
  end
end
