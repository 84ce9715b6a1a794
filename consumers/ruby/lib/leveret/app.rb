# frozen_string_literal: true

module Leveret
  # The handlers of one work queue, and the pure checks that pick a handler for
  # a delivery (the contract's consuming steps 1 to 5).
  #
  #   app = Leveret::App.new(queue: "leveret.demo.tasks", schemas: Leveret::Schemas.load("schemas"))
  #   app.handle("demo.export", versions: [1, 2]) do |payload, ctx|
  #     ExportJob.new(payload["user_id"], payload["format"]).run
  #   end
  class App
    # 25 minutes: below RabbitMQ's default consumer_timeout of 30 minutes, after
    # which the broker closes the channel of a consumer that has not acked.
    DEFAULT_TIMEOUT = 25 * 60

    Handler = Struct.new(:type, :versions, :timeout, :callable, :track, keyword_init: true) do
      def name = "#{type} v#{versions.join(',')}"
    end

    attr_reader :queue, :schemas, :handlers, :max_size

    def initialize(queue:, schemas:, max_size: Wire::DEFAULT_MAX_SIZE)
      @queue = queue
      @schemas = schemas
      @max_size = max_size
      @handlers = {}
    end

    # Register the handler of one message type, for the versions it accepts.
    #
    # The block (or `callable`) gets the validated payload (a Hash with string
    # keys) and a Context. Returning means success; raising is a transient
    # failure (retried through the tiers); raising Leveret::DeadLetter gives up
    # at once.
    #
    # With `track: true` the job reports its status to leveret.status (started,
    # ctx.progress, then succeeded, retrying or failed); a String the block
    # returns is the `result` of its succeeded event (a URL, a path).
    #
    # @raise [ConfigurationError] no schema file for a version, or the type already has a handler
    def handle(type, versions:, timeout: DEFAULT_TIMEOUT, track: false, callable: nil, &block)
      callable ||= block
      raise ConfigurationError, "handle(#{type.inspect}) needs a block or a callable" unless callable
      raise ConfigurationError, "#{type} already has a handler on #{queue}" if @handlers.key?(type)
      raise ConfigurationError, "timeout must be positive, got #{timeout}" unless timeout.positive?

      versions = Array(versions)
      raise ConfigurationError, "#{type}: give at least one version" if versions.empty?

      versions.each do |v|
        raise ConfigurationError, "#{type}: version #{v.inspect} is not an Integer" unless v.is_a?(Integer)
        unless schemas.known?(type, v)
          raise ConfigurationError, "no schema file #{type}.v#{v}.json in the schema directory"
        end
      end
      @handlers[type] = Handler.new(type: type, versions: versions.sort, timeout: timeout, callable: callable,
                                    track: track ? true : false)
      self
    end

    # Check a delivery and find its handler (steps 1 to 5 of the contract).
    #
    # @return [Array(Handler, Integer, Object)] the handler, the version, the validated payload
    # @raise [MessageError] a permanent failure, its #reason the contract's
    def resolve(delivery)
      body = delivery.body.to_s
      if body.bytesize > max_size
        raise MessageTooLarge, "body is #{body.bytesize} bytes, over the limit of #{max_size}"
      end
      unless Wire.json_content_type?(delivery.content_type)
        raise InvalidContentType, "content type #{delivery.content_type.inspect} is not #{Wire::CONTENT_TYPE.inspect}"
      end

      type = delivery.type.to_s
      raise UnknownMessageType, "message has no type property" if type.empty?

      handler = @handlers[type]
      raise UnknownMessageType, "no handler for message type #{type.inspect} on queue #{queue.inspect}" unless handler

      version = delivery.version
      raise UnknownVersion, "#{type}: missing or non-integer #{Wire::VERSION} header" if version.nil?
      unless handler.versions.include?(version)
        raise UnknownVersion, "#{type} v#{version} is not handled on #{queue.inspect} (accepted: #{handler.versions.inspect})"
      end

      payload = StrictJSON.parse(body)
      schemas.validate!(type, version, payload)
      [handler, version, payload]
    end
  end

  # What a handler knows about the delivery besides its payload, and a way to
  # publish follow-up messages on the worker's confirm channel.
  class Context
    attr_reader :message_id, :type, :version, :queue, :attempt, :redelivered, :correlation_id, :headers, :trace

    # @param status [#call, nil] reports a state of this job (set when it is tracked)
    # @param trace [Trace::Context, nil] the trace the delivery belongs to (read from its headers if not given)
    def initialize(delivery:, version:, queue:, publisher: nil, schemas: nil, log: nil, status: nil, trace: nil)
      @message_id = delivery.message_id.to_s
      @type = delivery.type
      @version = version
      @queue = queue
      @attempt = delivery.attempt
      @redelivered = delivery.redelivered ? true : false
      @correlation_id = delivery.correlation_id
      @headers = delivery.headers
      @publisher = publisher
      @schemas = schemas
      @log = log
      @status = status
      @trace = trace || Trace.of(delivery.headers)
    end

    def redelivered? = @redelivered

    # The trace this delivery belongs to (a new one when it came without a valid traceparent).
    def trace_id = @trace.trace_id

    # Whether this job reports its status (a tracked handler, or a batch member).
    def tracked? = !@status.nil?

    # Report progress to leveret.status: a percent (0 to 100) and a line of
    # text. Returns once confirmed; never raises. Does nothing for an untracked job.
    def progress(percent, message = nil)
      @status&.call("progress", percent: percent, message: message)
      nil
    end

    # The worker's logger (JSON lines on stderr).
    def log = @log || (@log = Log.new)

    # Publish a message with confirms; returns its message id.
    #
    # The payload is validated against its schema first. The correlation id
    # defaults to this delivery's (or its message id), tying the new message to
    # the same job. The message continues this delivery's trace (a traceparent
    # in `headers` is replaced).
    #
    # @raise [SchemaViolation, Unroutable, NotConfirmed]
    def publish(type, version, payload, exchange:, routing_key: "", correlation_id: nil, headers: {})
      raise ConfigurationError, "this context has no publisher (it is not in a worker)" unless @publisher

      body = JSON.generate(payload)
      # Validate what is sent, as the receiver will read it (string keys).
      @schemas&.validate!(type, version, JSON.parse(body))
      props = Wire.publish_properties(
        type: type, version: version, headers: Trace.merge(headers, Trace.follow_up_headers(@trace)),
        correlation_id: correlation_id || @correlation_id || @message_id
      )
      @publisher.publish(body, exchange: exchange, routing_key: routing_key.to_s, properties: props)
      props[:message_id]
    end
  end
end
