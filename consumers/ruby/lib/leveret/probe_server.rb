# frozen_string_literal: true

require "io/wait"
require "json"
require "socket"

module Leveret
  # The worker's HTTP endpoints, with nothing but the standard library's
  # sockets: one request per connection, on a thread of its own.
  #
  # - GET /livez: 200 while the worker is live, 503 with the reason otherwise;
  # - GET /readyz: 200 while it is ready to take work, 503 with the reason;
  # - GET /metrics: the Prometheus text of the worker's Metrics.
  class ProbeServer
    READ_TIMEOUT = 5.0
    MAX_REQUEST = 8192
    REASONS = { 200 => "OK", 400 => "Bad Request", 404 => "Not Found", 405 => "Method Not Allowed",
                503 => "Service Unavailable" }.freeze

    # @param health [Health] asked at each probe
    # @param metrics [Metrics]
    # @param host [String] the address to listen on (0.0.0.0 in a container)
    # @param port [Integer] the port; 0 picks a free one (see #port)
    # @param clock [#call] the clock Health is fed with
    def initialize(health:, metrics:, host: "127.0.0.1", port: 9100,
                   clock: -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) })
      @health = health
      @metrics = metrics
      @host = host
      @port = port
      @clock = clock
    end

    # Listen and serve on a thread.
    #
    # @return [Integer] the bound port
    # @raise [ConfigurationError] the address cannot be listened on
    def start
      @server = TCPServer.new(@host, @port)
      @thread = Thread.new { serve }
      @port = @server.addr[1]
    rescue SystemCallError, SocketError => e
      raise ConfigurationError, "cannot serve probes on #{@host}:#{@port}: #{e.message}"
    end

    attr_reader :port

    def close
      @server&.close
      @thread&.join(1)
    rescue IOError
      nil
    end

    # Status, body and content type for a request (no I/O).
    #
    # @return [Array(Integer, String, String)]
    def answer(method, path)
      return [405, "only GET and HEAD\n", "text/plain"] unless %w[GET HEAD].include?(method)

      now = @clock.call
      case path
      when "/livez", "/healthz" then verdict(@health.liveness(now))
      when "/readyz"
        ready = @health.readiness(now)
        @metrics.ready = ready.ok
        verdict(ready)
      when "/metrics"
        @metrics.ready = @health.readiness(now).ok
        [200, @metrics.render, Metrics::CONTENT_TYPE]
      else [404, "not found: try /livez, /readyz or /metrics\n", "text/plain"]
      end
    end

    private

    def serve
      loop do
        client = @server.accept
        # A slow client holds its own thread, never the next probe.
        Thread.new(client) { |c| handle(c) }
      end
    rescue IOError, Errno::EBADF
      nil # closed
    end

    def handle(client)
      head = read_head(client)
      return if head.nil?

      method, target = head.lines.first.to_s.split(" ", 3)
      status, body, kind =
        if head.bytesize > MAX_REQUEST
          [400, "request too large\n", "text/plain"]
        else
          answer(method, target.to_s.split("?", 2).first)
        end
      client.write("HTTP/1.1 #{status} #{REASONS.fetch(status)}\r\nContent-Type: #{kind}\r\n" \
                   "Content-Length: #{body.bytesize}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
      client.write(body) unless method == "HEAD"
    rescue SystemCallError, IOError
      nil
    ensure
      client.close
    end

    # The request line and headers, or nil if the client sends none in time.
    def read_head(client)
      head = +""
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + READ_TIMEOUT
      until head.include?("\r\n\r\n") || head.bytesize > MAX_REQUEST
        left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        return nil if left <= 0 || !client.wait_readable(left)

        chunk = client.read_nonblock(4096, exception: false)
        return nil if chunk.nil?
        next if chunk == :wait_readable

        head << chunk
      end
      head
    end

    def verdict(verdict)
      [verdict.ok ? 200 : 503, "#{JSON.generate(verdict.to_h)}\n", "application/json"]
    end
  end
end
