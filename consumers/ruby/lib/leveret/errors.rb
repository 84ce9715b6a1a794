# frozen_string_literal: true

module Leveret
  # Base class of every error this library raises.
  class Error < StandardError; end

  # Settings that cannot work: a missing schema file, a bad handler.
  class ConfigurationError < Error; end

  # A queue or exchange the program needs does not exist on the broker.
  class TopologyMissing < Error; end

  # A message that can never be accepted as it is: a permanent failure. Each
  # subclass names the contract's `leveret-reason`.
  class MessageError < Error
    def reason = "invalid-message"
  end

  class MessageTooLarge < MessageError
    def reason = "too-large"
  end

  class InvalidContentType < MessageError
    def reason = "invalid-content-type"
  end

  class UnknownMessageType < MessageError
    def reason = "unknown-type"
  end

  class UnknownVersion < MessageError
    def reason = "unknown-version"
  end

  class DecodeError < MessageError
    def reason = "invalid-json"
  end

  class SchemaViolation < MessageError
    def reason = "schema-violation"
  end

  # Raised by a handler that gives up on purpose: the message goes straight to
  # the dead-letter queue with reason `dead-letter` and this error's message.
  class DeadLetter < Error; end

  # A handler ran past its timeout: a transient failure like any other error.
  class HandlerTimeout < Error; end

  # The broker did not take a published message.
  class PublishError < Error; end

  # No queue is bound for the exchange and routing key (a basic.return).
  class Unroutable < PublishError; end

  # The broker nacked the message, closed the channel, or the connection was
  # lost before the confirm arrived.
  class NotConfirmed < PublishError; end

  # The broker nacked the message (a quorum queue refuses publishes for a while
  # after its leader moved): sending it again, on a new channel, may succeed.
  class Nacked < NotConfirmed; end

  # The broker closed the channel with 404: the exchange does not exist.
  class ExchangeMissing < NotConfirmed; end

  # The broker closed the channel with 403: the user may not publish there.
  class AccessRefused < NotConfirmed; end

  # The connection was lost before the confirm: publishing again with the same
  # message id is safe (a duplicate is possible, a loss is not).
  class ConnectionLost < NotConfirmed; end

  # The broker could not be reached within the publisher's reconnect timeout.
  class BrokerUnavailable < PublishError; end
end
