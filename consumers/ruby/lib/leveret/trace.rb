# frozen_string_literal: true

require "securerandom"

module Leveret
  # W3C Trace Context (version 00) on leveret messages: one `traceparent`
  # header carries a trace across languages (docs/contract.md, "Trace
  # context"). Pure: the worker and TaskPublisher decide with these functions
  # which trace headers a message they send carries.
  #
  #   traceparent = 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>
  #
  # A delivery without a valid traceparent is never an error: it starts a new
  # trace, which its follow-ups continue.
  module Trace
    TRACEPARENT = "traceparent"
    TRACESTATE = "tracestate"
    # The flags of a trace that starts here: sampled.
    NEW_TRACE_FLAGS = "01"

    FORMAT = /\A00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\z/
    ZEROS = /\A0+\z/

    # One trace context. `tracestate` travels with it, unchanged, or is nil.
    Context = Struct.new(:trace_id, :parent_id, :flags, :tracestate, keyword_init: true) do
      def traceparent = "00-#{trace_id}-#{parent_id}-#{flags}"
    end

    module_function

    # The Context a traceparent value names, or nil when it is not one: not
    # version 00, not lowercase hex of the right lengths, or an all-zero
    # trace-id or parent-id.
    def parse(value)
      return nil unless value.is_a?(String)

      match = FORMAT.match(value)
      return nil unless match

      trace_id, parent_id, flags = match.captures
      return nil if ZEROS.match?(trace_id) || ZEROS.match?(parent_id)

      Context.new(trace_id: trace_id, parent_id: parent_id, flags: flags)
    end

    # A new trace: random trace-id and parent-id, sampled.
    def root = Context.new(trace_id: random_hex(16), parent_id: random_hex(8), flags: NEW_TRACE_FLAGS)

    # A message sent on behalf of `parent`: the same trace, flags and
    # tracestate, a parent-id of its own.
    def child(parent)
      Context.new(trace_id: parent.trace_id, parent_id: random_hex(8), flags: parent.flags,
                  tracestate: parent.tracestate)
    end

    # The trace a message with these headers belongs to: its own, with its
    # tracestate, or a new one when it has no valid traceparent (a tracestate
    # that came with an invalid one is not carried into it).
    def of(headers)
      headers = (headers || {}).to_h.transform_keys(&:to_s)
      context = parse(headers[TRACEPARENT])
      return root unless context

      state = headers[TRACESTATE]
      context.tracestate = state if state.is_a?(String)
      context
    end

    # The trace headers of a message sent on behalf of `trace`: a child
    # traceparent, and the tracestate unchanged when there is one.
    def follow_up_headers(trace)
      headers(child(trace))
    end

    # The trace headers of a message published outside any handler: a new
    # trace, unless the caller's headers carry a valid traceparent, which is
    # then the parent.
    def publish_headers(caller_headers)
      caller_headers = (caller_headers || {}).to_h.transform_keys(&:to_s)
      return headers(root) unless parse(caller_headers[TRACEPARENT])

      follow_up_headers(of(caller_headers))
    end

    # The headers a Context is sent as.
    def headers(context)
      out = { TRACEPARENT => context.traceparent }
      out[TRACESTATE] = context.tracestate if context.tracestate
      out
    end

    # Caller headers with the trace headers put in place of theirs.
    def merge(caller_headers, trace_headers)
      (caller_headers || {}).to_h.transform_keys(&:to_s)
                            .reject { |name, _| [TRACEPARENT, TRACESTATE].include?(name) }
                            .merge(trace_headers)
    end

    # `bytes` random bytes as lowercase hex, never all zeros (which the format forbids).
    def random_hex(bytes)
      loop do
        hex = SecureRandom.hex(bytes)
        return hex unless ZEROS.match?(hex)
      end
    end
  end
end
