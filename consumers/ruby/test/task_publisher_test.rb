# frozen_string_literal: true

require "test_helper"
require "task_publisher"

# What the publisher refuses before it ever talks to a broker.
class TaskPublisherTest < Minitest::Test
  include TestSupport

  # Port 1 on loopback: any attempt to connect would fail loudly, so these
  # tests prove that nothing is sent.
  def publisher
    TaskPublisher.new(url: "amqp://guest:guest@127.0.0.1:1/", schemas_dir: SCHEMAS_DIR, reconnect_timeout: 0.1,
                      log: Leveret::Log.new(StringIO.new))
  end

  def test_an_invalid_payload_raises_and_sends_nothing
    error = assert_raises(TaskPublisher::InvalidPayload) do
      publisher.publish("demo.export", 1, { user_id: "7" }, exchange: "leveret.demo", routing_key: "export")
    end
    assert_match(/not published: demo\.export v1: user_id: must be integer/, error.message)
    assert_kind_of Leveret::SchemaViolation, error
  end

  def test_an_unknown_format_is_refused
    assert_raises(TaskPublisher::InvalidPayload) do
      publisher.publish("demo.export", 1, { user_id: 7, format: "pdf" }, exchange: "x", routing_key: "export")
    end
  end

  def test_a_too_large_body_is_refused
    big = TaskPublisher.new(url: "amqp://127.0.0.1:1/", schemas_dir: SCHEMAS_DIR, max_size: 10)
    assert_raises(Leveret::MessageTooLarge) do
      big.publish("demo.export", 1, { user_id: 7, format: "csv" }, exchange: "x", routing_key: "export")
    end
  end

  def test_an_unknown_type_is_refused
    assert_raises(Leveret::ConfigurationError) do
      publisher.publish("demo.unknown", 1, {}, exchange: "x", routing_key: "y")
    end
  end

  def test_no_broker_is_reported_after_the_reconnect_timeout
    error = assert_raises(Leveret::BrokerUnavailable) do
      publisher.publish("demo.export", 1, { user_id: 7 }, exchange: "x", routing_key: "export")
    end
    refute_match(/guest:guest/, error.message)
  end

  def test_the_class_method_validates_too
    TaskPublisher.configure(url: "amqp://127.0.0.1:1/", schemas_dir: SCHEMAS_DIR, reconnect_timeout: 0.1)
    assert_raises(TaskPublisher::InvalidPayload) { TaskPublisher.publish_export_task(0, "csv") }
  ensure
    TaskPublisher.configure
  end
end
