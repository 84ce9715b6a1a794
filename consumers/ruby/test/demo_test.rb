# frozen_string_literal: true

require "test_helper"

# The conformance handler of docs/contract.md §8, with a fake publisher.
class DemoTest < Minitest::Test
  include TestSupport

  class FakePublisher
    attr_reader :sent

    def initialize = @sent = []

    def publish(body, exchange:, routing_key:, properties:)
      @sent << { body: JSON.parse(body), exchange: exchange, routing_key: routing_key, properties: properties }
      properties[:message_id]
    end
  end

  TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
  PARENT_ID = "00f067aa0ba902b7"

  def context(retry_count: 0, publisher: FakePublisher.new)
    headers = { "leveret-version" => 1, "traceparent" => "00-#{TRACE_ID}-#{PARENT_ID}-01" }
    headers["leveret-retry-count"] = retry_count if retry_count.positive?
    Leveret::Context.new(delivery: delivery(headers: headers, message_id: "task-1"), version: 1, queue: "q",
                         publisher: publisher, schemas: schemas, log: Leveret::Log.new(StringIO.new))
  end

  def test_fails_while_the_attempt_is_at_most_fail_times
    error = assert_raises(Leveret::Demo::ConformanceFailure) do
      Leveret::Demo.conformance({ "fail_times" => 99 }, context(retry_count: 2))
    end
    assert_equal "failing on purpose: attempt 3 of 99", error.message
  end

  def test_sends_a_receipt_when_it_succeeds
    publisher = FakePublisher.new
    payload = { "fail_times" => 1, "receipt_exchange" => "receipts", "receipt_routing_key" => nil }
    Leveret::Demo.conformance(payload, context(retry_count: 1, publisher: publisher))
    assert_equal 1, publisher.sent.size
    sent = publisher.sent.first
    assert_equal({ "message_id" => "task-1", "attempt" => 2, "consumer" => "ruby" }, sent[:body])
    assert_equal "receipts", sent[:exchange]
    assert_equal "", sent[:routing_key]
    props = sent[:properties]
    assert_equal "leveret.conformance.receipt", props[:type]
    assert_equal "application/json", props[:content_type]
    assert_equal 2, props[:delivery_mode]
    assert_equal %w[leveret-version traceparent], props[:headers].keys.sort
    assert_kind_of Integer, props[:headers]["leveret-version"]
    # The receipt continues the task's trace, with a parent-id of its own.
    trace = Leveret::Trace.parse(props[:headers]["traceparent"])
    assert_equal [TRACE_ID, "01"], [trace.trace_id, trace.flags]
    refute_equal PARENT_ID, trace.parent_id
    assert_equal "task-1", props[:correlation_id]
    refute_equal "task-1", props[:message_id]
  end

  def test_no_receipt_without_an_exchange
    publisher = FakePublisher.new
    Leveret::Demo.conformance({}, context(publisher: publisher))
    assert_empty publisher.sent
  end

  def test_sleeps_sleep_ms
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    Leveret::Demo.conformance({ "sleep_ms" => 120 }, context)
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :>=, 0.12
  end

  def test_export_logs_a_line
    io = StringIO.new
    ctx = Leveret::Context.new(delivery: delivery(type: "demo.export", message_id: "e-1"), version: 2, queue: "q",
                               log: Leveret::Log.new(io))
    Leveret::Demo.export({ "user_id" => 3, "columns" => ["id"] }, ctx)
    line = JSON.parse(io.string)
    assert_equal "demo.export_written", line["event"]
    assert_equal 3, line["user_id"]
    assert_equal "csv", line["format"]
    assert_equal ["id"], line["columns"]
  end
end
