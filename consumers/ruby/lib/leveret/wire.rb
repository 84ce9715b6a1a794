# frozen_string_literal: true

require "amq/protocol/client"
require "securerandom"
require "socket"
require "time"

module Leveret
  # The wire contract of docs/contract.md: header names, reasons, and the pure
  # rules for building a retry or dead-letter copy. No I/O here.
  module Wire
    CONTENT_TYPE = "application/json"

    VERSION = "leveret-version"
    RETRY_COUNT = "leveret-retry-count"
    REASON = "leveret-reason"
    ERROR_TYPE = "leveret-error-type"
    ERROR_MESSAGE = "leveret-error-message"
    ERROR_TRACEBACK = "leveret-error-traceback"
    FIRST_FAILED_AT = "leveret-first-failed-at"
    LAST_FAILED_AT = "leveret-last-failed-at"
    FAILED_BY = "leveret-failed-by"
    FAILED_QUEUE = "leveret-failed-queue"
    ORIGINAL_EXCHANGE = "leveret-original-exchange"
    ORIGINAL_ROUTING_KEY = "leveret-original-routing-key"
    DROPPED_HEADERS = "leveret-dropped-headers"

    HANDLER_ERROR = "handler-error"
    DEAD_LETTER = "dead-letter"

    DEFAULT_MAX_SIZE = 1024 * 1024
    MAX_ERROR_MESSAGE = 1024
    MAX_TRACEBACK = 4096
    MAX_HEADER_VALUE = 1024
    # Budget for a copy's encoded header table: the properties must fit in one
    # frame (RabbitMQ's frame_max is 128 KiB by default), or the channel closes
    # and the message comes back again and again.
    MAX_HEADERS = 64 * 1024
    TRUNCATED = "…[truncated]"

    # A received message, client-neutral: what the pure decisions work on.
    Delivery = Struct.new(
      :body, :exchange, :routing_key, :message_id, :type, :content_type,
      :correlation_id, :redelivered, :headers,
      keyword_init: true
    ) do
      def initialize(**fields)
        super
        self.headers ||= {} # a message without a header table
      end

      # The schema version header, when it is an AMQP integer (a boolean is not).
      def version = Wire.integer(headers[VERSION])

      # Failed attempts before this delivery; absent or not an integer reads as 0.
      def retry_count = Wire.integer(headers[RETRY_COUNT]) || 0

      # The number of this attempt, from 1.
      def attempt = retry_count + 1
    end

    # A failed delivery's copy: where it goes and its new headers.
    Copy = Struct.new(:exchange, :routing_key, :headers, :outcome, :reason, :error, :permanent, keyword_init: true)

    module_function

    def retry_exchange(queue) = "#{queue}.retry"
    def dead_exchange(queue) = "#{queue}.dead"
    def dead_letter_queue(queue) = "#{queue}.dlq"
    def tier_queue(queue, index) = "#{queue}.retry.#{index}"

    # What a consumer checks, passively, before it consumes `queue`.
    def required(queue)
      [[:queue, queue], [:exchange, retry_exchange(queue)], [:exchange, dead_exchange(queue)],
       [:queue, dead_letter_queue(queue)]]
    end

    # An Integer, or nil. true and false are Ruby's, never Integers, so an AMQP
    # boolean is not read as a number.
    def integer(value) = value.is_a?(Integer) ? value : nil

    # The contract's timestamp: ISO 8601 UTC with milliseconds, "+00:00" offset.
    def timestamp(time = Time.now) = time.utc.strftime("%Y-%m-%dT%H:%M:%S.%L+00:00")

    # Who failed a delivery: `<queue>@<host>:<pid>`.
    def failed_by(queue) = "#{queue}@#{Socket.gethostname}:#{Process.pid}"

    def new_message_id = SecureRandom.uuid

    # Is the media type of a content_type application/json (case and parameters ignored)?
    def json_content_type?(content_type)
      content_type.to_s.split(";", 2).first.to_s.strip.downcase == CONTENT_TYPE
    end

    # Replace the password of every URL in `text` with ***.
    def redact(text)
      text.to_s.gsub(%r{([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@}i, '\1:***@')
    end

    # The URL as Bunny should read it. leveret's default URL ends in "/"; pika
    # (and so leveret's Python side) reads an empty path as the default vhost
    # "/", while Bunny reads it as the vhost "" (which does not exist). Only
    # that case changes: "amqp://h/" becomes "amqp://h"; "amqp://h/%2F" and
    # "amqp://h/other" are left alone. leveret's `?cafile=` is spelt
    # `cacertfile` for Bunny (certfile and keyfile are the same in both).
    def bunny_url(url)
      url.to_s.strip.sub(%r{\A(amqps?://[^/?#]*)/(?=\?|\z)}i, '\1').gsub(/([?&])cafile=/, '\1cacertfile=')
    end

    # Cut `text` to at most `limit` UTF-8 bytes, marking the cut.
    #
    # keep: :start keeps the beginning (error messages), :end the end (stack
    # traces, whose last lines say the most).
    def truncate(text, limit, keep: :start)
      text = text.to_s.dup.force_encoding(Encoding::UTF_8).scrub
      return text if text.bytesize <= limit

      room = limit - TRUNCATED.bytesize
      if keep == :end
        TRUNCATED + text.byteslice(text.bytesize - room, room).scrub("")
      else
        text.byteslice(0, room).scrub("") + TRUNCATED
      end
    end

    # The stack trace of an error, as a header value.
    def traceback(error)
      lines = ["#{error.class}: #{error.message}"] + Array(error.backtrace).map { |l| "  #{l}" }
      cause = error.cause
      while cause
        lines << "caused by #{cause.class}: #{cause.message}"
        lines.concat(Array(cause.backtrace).map { |l| "  #{l}" })
        cause = cause.cause
      end
      truncate(lines.join("\n"), MAX_TRACEBACK, keep: :end)
    end

    # Decide where a failed delivery goes and build its copy's headers.
    #
    # A MessageError (bad input) or a DeadLetter raised by the handler is
    # permanent and goes to `<queue>.dead`; anything else is transient and goes
    # to `<queue>.retry`, where the broker picks a tier, or the DLQ, from the count.
    #
    # @param delivery [Delivery]
    # @param queue [String] the queue it was consumed from
    # @param error [Exception] what went wrong
    # @param consumer [String] for leveret-failed-by
    # @param now [Time] the failure time
    # @return [Copy]
    def failure(delivery, queue, error, consumer:, now: Time.now)
      permanent = error.is_a?(MessageError) || error.is_a?(DeadLetter)
      reason =
        if error.is_a?(MessageError) then error.reason
        elsif error.is_a?(DeadLetter) then DEAD_LETTER
        else HANDLER_ERROR
        end
      text = error.message.to_s
      text = error.class.name if text.empty?
      message = truncate(text, MAX_ERROR_MESSAGE)
      stamp = timestamp(now)

      # x- headers belong to the broker (x-death and friends): the copy carries none.
      headers = delivery.headers.reject { |name, _| name.to_s.start_with?("x-") }
      headers = headers.transform_keys(&:to_s)
      headers.merge!(
        RETRY_COUNT => delivery.retry_count + 1,
        REASON => reason,
        ERROR_TYPE => truncate(error.class.name.to_s, MAX_HEADER_VALUE),
        ERROR_MESSAGE => message,
        LAST_FAILED_AT => stamp,
        FAILED_BY => truncate(consumer, MAX_HEADER_VALUE),
        FAILED_QUEUE => queue
      )
      headers[FIRST_FAILED_AT] = stamp unless headers.key?(FIRST_FAILED_AT)
      headers[ORIGINAL_EXCHANGE] = delivery.exchange.to_s unless headers.key?(ORIGINAL_EXCHANGE)
      headers[ORIGINAL_ROUTING_KEY] = delivery.routing_key.to_s unless headers.key?(ORIGINAL_ROUTING_KEY)
      if permanent
        headers.delete(ERROR_TRACEBACK)
      else
        headers[ERROR_TRACEBACK] = traceback(error)
      end
      fit!(headers, MAX_HEADERS)

      Copy.new(
        exchange: permanent ? dead_exchange(queue) : retry_exchange(queue),
        routing_key: "",
        headers: headers,
        outcome: permanent ? "dead_lettered" : "retry_scheduled",
        reason: reason,
        error: message,
        permanent: permanent
      )
    end

    # Shrink a header table in place until its encoded size is within `budget`:
    # the traceback goes first, then the largest application headers, whose
    # names are recorded in leveret-dropped-headers. leveret- headers stay.
    def fit!(headers, budget)
      return headers if encoded_size(headers) <= budget

      headers.delete(ERROR_TRACEBACK)
      by_size = headers.keys.reject { |k| k.start_with?("leveret-") }
                       .sort_by { |k| -encoded_size(k => headers[k]) }
      dropped = []
      by_size.each do |name|
        break if encoded_size(headers) <= budget

        headers.delete(name)
        dropped << name
      end
      headers[DROPPED_HEADERS] = truncate(dropped.join(","), MAX_HEADER_VALUE) unless dropped.empty?
      headers
    end

    # The exact size of a header table in the AMQP encoding, in bytes.
    def encoded_size(headers) = AMQ::Protocol::Table.encode(headers).bytesize

    # The properties of a retry or dead-letter copy: the delivery's, with
    # `expiration` and `user_id` dropped (the tier's TTL decides the delay; the
    # broker would check user_id against the republishing user), persistent,
    # with the new headers.
    #
    # @param props [Hash] the delivery's properties (symbol keys, as Bunny names them)
    # @return [Hash] Bunny publish options
    def copy_properties(props, headers, now: Time.now)
      stamp = props[:timestamp]
      {
        content_type: props[:content_type],
        content_encoding: props[:content_encoding],
        headers: headers,
        delivery_mode: 2,
        persistent: true,
        priority: props[:priority],
        correlation_id: props[:correlation_id],
        reply_to: props[:reply_to],
        message_id: props[:message_id],
        timestamp: stamp ? stamp.to_i : now.to_i,
        type: props[:type],
        app_id: props[:app_id]
      }.compact
    end

    # The properties and headers of a new message, as the contract's publishers set them.
    def publish_properties(type:, version:, message_id: nil, correlation_id: nil, app_id: nil, headers: {}, now: Time.now)
      # leveret- headers belong to the contract: a caller cannot forge a retry
      # count or a failure reason.
      own = headers.to_h.transform_keys(&:to_s).reject { |k, _| k.start_with?("leveret-") }
      raise ArgumentError, "version must be an Integer, got #{version.inspect}" unless version.is_a?(Integer)

      {
        content_type: CONTENT_TYPE,
        delivery_mode: 2,
        persistent: true,
        message_id: message_id || new_message_id,
        type: type,
        timestamp: now.to_i,
        correlation_id: correlation_id,
        app_id: app_id,
        headers: own.merge(VERSION => version)
      }.compact
    end
  end
end
