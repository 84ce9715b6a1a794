# frozen_string_literal: true

require "bunny"

module Leveret
  # Publishes with `mandatory` on channels in publisher-confirm mode and waits
  # for each message's confirm, one channel per thread.
  #
  # Bunny channels must not be shared between threads, and a channel's confirms
  # are counted per channel, so each thread gets its own channel, opened on first
  # use and reopened if the broker closed it. A publish has succeeded only when
  # the broker acked it; a basic.return (unroutable), a basic.nack, a closed
  # channel or a lost connection raise.
  #
  # A nack retires the thread's channel: the next publish goes out on a new one.
  # (RabbitMQ 3.10/3.11 keep nacking on a channel whose quorum-queue client
  # learned a queue's members while a stopped node was still recorded as
  # leader; a new channel learns them afresh.) A retired channel is closed once
  # the confirms of its publishes have all come, by this publisher: nothing
  # else sees it close.
  class ConfirmPublisher
    DEFAULT_CONFIRM_TIMEOUT = 30.0

    # @param connection [Bunny::Session] a started connection (shared, thread-safe)
    # @param confirm_timeout [Numeric] seconds to wait for one confirm
    def initialize(connection, confirm_timeout: DEFAULT_CONFIRM_TIMEOUT)
      @connection = connection
      @confirm_timeout = confirm_timeout
      @channels = {}
      @retired = [] # nacked channels, closed once their confirms have come
      @mutex = Mutex.new
    end

    attr_reader :connection

    # Publish one message and wait for its confirm.
    #
    # @param body [String] the encoded body
    # @param properties [Hash] Bunny publish options (content_type, message_id, headers...)
    # @raise [Unroutable] the broker returned it: no queue is bound for the route
    # @raise [Nacked] the broker nacked it; the next publish of this thread uses a new channel
    # @raise [NotConfirmed] channel closed (e.g. 404: no such exchange), no confirm in time
    # @raise [ConnectionLost] the connection dropped before the confirm; publishing again is safe
    def publish(body, exchange:, routing_key:, properties:)
      current = channel
      current.publish(body, exchange: exchange, routing_key: routing_key, properties: properties,
                            timeout: @confirm_timeout)
    rescue Nacked
      retire(current)
      raise
    end

    # Close every channel this publisher opened (not the connection).
    def close
      channels = @mutex.synchronize do
        (@channels.values + @retired).tap do
          @channels.clear
          @retired.clear
        end
      end
      channels.each(&:close)
    end

    private

    # Take a nacked channel out of use (the calling thread gets a new one on
    # its next publish); it is closed once its pending confirms have come.
    def retire(nacked)
      return if nacked.nil?

      @mutex.synchronize do
        @channels.delete(Thread.current) if @channels[Thread.current].equal?(nacked)
        @retired << nacked
      end
      sweep_retired
    end

    # Close the retired channels whose publishes were all confirmed (or whose
    # connection is gone: no confirm will come).
    def sweep_retired
      done = @mutex.synchronize { @retired.select(&:settled?).tap { |d| @retired -= d } }
      done.each(&:close)
    end

    # The calling thread's confirm channel.
    def channel
      thread = Thread.current
      sweep_retired
      current = @mutex.synchronize do
        # Threads come and go (a Bunny work pool is rebuilt after a recovery):
        # close the channels of the dead ones.
        dead = @channels.keys.reject(&:alive?)
        dead.each { |t| @channels.delete(t).close }
        @channels[thread]
      end
      return current if current&.usable?
      raise ConnectionLost, "the connection is not open (Bunny may be recovering it)" unless @connection.open?

      current&.close
      fresh = ConfirmChannel.new(@connection)
      @mutex.synchronize { @channels[thread] = fresh }
    rescue Bunny::ChannelLevelException, Bunny::ConnectionLevelException, Bunny::NetworkFailure,
           Bunny::ConnectionClosedError, Bunny::ChannelAlreadyClosed, IOError, SystemCallError, Timeout::Error => e
      raise ConnectionLost, "cannot open a channel: #{e.class}: #{Wire.redact(e.message)}"
    end
  end

  # One Bunny channel in confirm mode, used by one thread at a time.
  class ConfirmChannel
    def initialize(connection)
      @connection = connection
      @mutex = Mutex.new
      @cond = ConditionVariable.new
      @outcomes = {}
      @returns = {}
      @exchanges = {}
      @published = 0 # the last publish's sequence number
      @recoveries = 0 # the channel's recoveries at that publish
      @confirmed = 0 # the highest sequence number the broker acked or nacked
      @channel = connection.create_channel
      # The callback runs on Bunny's reader thread, for every ack or nack.
      @channel.confirm_select(method(:on_confirm))
    end

    def usable? = @channel.open? && @connection.open?

    # Every publish was confirmed, or no confirm can come any more (the
    # channel closed, or was recovered: the confirms of before are lost).
    def settled?
      return true if !usable? || @channel.recoveries_counter.get != @recoveries

      @mutex.synchronize { @confirmed >= @published }
    end

    def close
      @channel.close if @channel.open? && @connection.open?
    rescue Bunny::Exception, IOError, SystemCallError, Timeout::Error
      nil
    end

    def publish(body, exchange:, routing_key:, properties:, timeout:)
      register(exchange)
      message_id = properties[:message_id]
      seq = @channel.next_publish_seq_no
      recoveries = @channel.recoveries_counter.get
      @mutex.synchronize do
        @returns.delete(message_id)
        @published = seq
        @recoveries = recoveries
      end
      begin
        @channel.basic_publish(body, exchange, routing_key, properties.merge(mandatory: true))
      rescue Bunny::ChannelAlreadyClosed => e
        raise NotConfirmed, e.message
      rescue Bunny::ConnectionClosedError, Bunny::NetworkFailure, IOError, SystemCallError => e
        raise ConnectionLost, "connection lost while publishing: #{e.class}"
      end
      outcome = wait_for(seq, recoveries, timeout, exchange)
      returned = @mutex.synchronize { @returns.delete(message_id) }
      if returned
        raise Unroutable, "message #{message_id} is unroutable: no queue is bound to exchange " \
                          "#{exchange.inspect} with routing key #{routing_key.inspect} " \
                          "(#{returned.reply_code} #{returned.reply_text})"
      end
      raise Nacked, "the broker nacked message #{message_id}" if outcome == :nack

      message_id
    end

    private

    # Bunny delivers basic.return to the Exchange object of the channel: keep
    # one per exchange name, never declared (`no_declare`, also on recovery).
    def register(name)
      @exchanges[name] ||= Bunny::Exchange.new(@channel, :direct, name, no_declare: true).tap do |x|
        x.on_return do |info, props, _body|
          @mutex.synchronize { @returns[props.message_id] = info }
        end
      end
    end

    def on_confirm(tag, _multiple, nack)
      @mutex.synchronize do
        @outcomes[tag] = nack ? :nack : :ack
        @confirmed = tag if tag > @confirmed
        @cond.broadcast
      end
    end

    # Wait for the confirm of publish number `seq`. The broker sends a
    # basic.return before the ack of a returned message, and both arrive on the
    # reader thread in order, so a return is recorded by the time this returns.
    def wait_for(seq, recoveries, timeout, exchange)
      deadline = monotonic + timeout
      @mutex.synchronize do
        loop do
          if @outcomes.key?(seq)
            outcome = @outcomes.delete(seq)
            @outcomes.delete_if { |tag, _| tag < seq }
            return outcome
          end
          if @channel.recoveries_counter.get != recoveries || !@connection.open?
            raise ConnectionLost, "connection lost before the confirm arrived"
          end
          raise_closed(exchange) if @channel.closed?

          left = deadline - monotonic
          raise NotConfirmed, "no confirm within #{timeout}s" if left <= 0

          # Short waits: a closed channel or a lost connection wakes nobody.
          @cond.wait(@mutex, [left, 0.1].min)
        end
      end
    end

    # Bunny keeps the broker's channel.close as the channel's last error (it
    # has no public reader for it in 2.19).
    def raise_closed(exchange)
      error = @channel.instance_variable_get(:@last_channel_error)
      text = error ? Wire.redact(error.message) : "closed"
      case error
      when Bunny::NotFound
        raise ExchangeMissing, "exchange #{exchange.inspect} does not exist; run `leveret topology apply` (#{text})"
      when Bunny::AccessRefused
        raise AccessRefused, "the user may not publish to exchange #{exchange.inspect} (#{text})"
      else
        raise NotConfirmed, "channel closed before the confirm arrived: #{text}"
      end
    end

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
