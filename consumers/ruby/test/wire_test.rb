# frozen_string_literal: true

require "test_helper"

class WireTest < Minitest::Test
  include TestSupport
  W = Leveret::Wire
  NOW = Time.utc(2026, 1, 2, 3, 4, 5.123r)

  def transient_error
    raise "boom"
  rescue RuntimeError => e
    e
  end

  def fail(delivery, error = transient_error, queue: "q")
    W.failure(delivery, queue, error, consumer: "q@host:1", now: NOW)
  end

  # --- the count ---------------------------------------------------------------

  def test_count_absent_becomes_one
    copy = fail(delivery(headers: { "leveret-version" => 1 }))
    assert_equal 1, copy.headers["leveret-retry-count"]
    assert_kind_of Integer, copy.headers["leveret-retry-count"]
  end

  def test_count_is_incremented
    copy = fail(delivery(headers: { "leveret-version" => 1, "leveret-retry-count" => 2 }))
    assert_equal 3, copy.headers["leveret-retry-count"]
  end

  def test_non_integer_counts_read_as_zero
    ["1", true, false, 1.0, nil].each do |bad|
      copy = fail(delivery(headers: { "leveret-retry-count" => bad }))
      assert_equal 1, copy.headers["leveret-retry-count"], "count #{bad.inspect}"
    end
  end

  def test_count_goes_up_on_permanent_failures_too
    copy = fail(delivery(headers: { "leveret-retry-count" => 1 }), Leveret::SchemaViolation.new("bad"))
    assert_equal 2, copy.headers["leveret-retry-count"]
  end

  def test_delivery_attempt_and_version
    d = delivery(headers: { "leveret-version" => 2, "leveret-retry-count" => 4 })
    assert_equal 5, d.attempt
    assert_equal 2, d.version
    assert_nil delivery(headers: { "leveret-version" => "2" }).version
    assert_nil delivery(headers: { "leveret-version" => true }).version
    assert_nil delivery(headers: nil).version
  end

  # --- where the copy goes -------------------------------------------------------

  def test_transient_failure_goes_to_the_retry_exchange
    copy = fail(delivery)
    assert_equal "q.retry", copy.exchange
    assert_equal "", copy.routing_key
    assert_equal "handler-error", copy.headers["leveret-reason"]
    assert_equal "retry_scheduled", copy.outcome
    refute copy.permanent
  end

  def test_message_errors_go_to_the_dead_exchange_with_their_reason
    {
      Leveret::MessageTooLarge => "too-large",
      Leveret::InvalidContentType => "invalid-content-type",
      Leveret::UnknownMessageType => "unknown-type",
      Leveret::UnknownVersion => "unknown-version",
      Leveret::DecodeError => "invalid-json",
      Leveret::SchemaViolation => "schema-violation"
    }.each do |klass, reason|
      copy = fail(delivery, klass.new("why"))
      assert_equal "q.dead", copy.exchange, klass.name
      assert_equal reason, copy.headers["leveret-reason"]
      assert_equal "dead_lettered", copy.outcome
    end
  end

  def test_dead_letter_from_a_handler_is_permanent
    copy = fail(delivery, Leveret::DeadLetter.new("user was deleted"))
    assert_equal "q.dead", copy.exchange
    assert_equal "dead-letter", copy.headers["leveret-reason"]
    assert_equal "user was deleted", copy.headers["leveret-error-message"]
  end

  # --- the headers ---------------------------------------------------------------

  def test_failure_headers
    copy = fail(delivery(exchange: "leveret.demo", routing_key: "conformance"))
    h = copy.headers
    assert_equal "RuntimeError", h["leveret-error-type"]
    assert_equal "boom", h["leveret-error-message"]
    assert_equal "2026-01-02T03:04:05.123+00:00", h["leveret-last-failed-at"]
    assert_equal "2026-01-02T03:04:05.123+00:00", h["leveret-first-failed-at"]
    assert_equal "q@host:1", h["leveret-failed-by"]
    assert_equal "q", h["leveret-failed-queue"]
    assert_equal "leveret.demo", h["leveret-original-exchange"]
    assert_equal "conformance", h["leveret-original-routing-key"]
    assert_equal 1, h["leveret-version"]
    assert_match(/RuntimeError: boom/, h["leveret-error-traceback"])
  end

  def test_first_failed_and_original_route_are_kept_when_present
    earlier = {
      "leveret-retry-count" => 1,
      "leveret-first-failed-at" => "2025-12-31T00:00:00.000+00:00",
      "leveret-original-exchange" => "leveret.demo",
      "leveret-original-routing-key" => "conformance"
    }
    copy = fail(delivery(headers: earlier, exchange: "", routing_key: "q"))
    assert_equal "2025-12-31T00:00:00.000+00:00", copy.headers["leveret-first-failed-at"]
    assert_equal "leveret.demo", copy.headers["leveret-original-exchange"]
    assert_equal "conformance", copy.headers["leveret-original-routing-key"]
    assert_equal "2026-01-02T03:04:05.123+00:00", copy.headers["leveret-last-failed-at"]
  end

  def test_original_exchange_may_be_the_default_exchange
    copy = fail(delivery(exchange: "", routing_key: "q"))
    assert_equal "", copy.headers["leveret-original-exchange"]
  end

  def test_x_headers_are_removed_and_application_headers_kept
    headers = { "x-death" => [{ "count" => 1 }], "x-first-death-queue" => "q", "tenant" => "acme", "leveret-version" => 1 }
    copy = fail(delivery(headers: headers))
    assert_empty copy.headers.keys.grep(/\Ax-/)
    assert_equal "acme", copy.headers["tenant"]
  end

  def test_traceback_only_on_transient_failures
    earlier = { "leveret-error-traceback" => "old trace" }
    assert fail(delivery(headers: earlier)).headers.key?("leveret-error-traceback")
    refute fail(delivery(headers: earlier), Leveret::UnknownVersion.new("v9")).headers.key?("leveret-error-traceback")
  end

  def test_empty_error_message_falls_back_to_the_class_name
    copy = fail(delivery, Leveret::HandlerTimeout.new)
    assert_equal "Leveret::HandlerTimeout", copy.headers["leveret-error-message"]
  end

  def test_the_delivery_headers_are_not_mutated
    headers = { "leveret-version" => 1, "x-death" => [] }.freeze
    fail(delivery(headers: headers))
    assert_equal({ "leveret-version" => 1, "x-death" => [] }, headers)
  end

  # --- truncation ----------------------------------------------------------------

  def test_truncate_keeps_the_start_and_marks_the_cut
    text = W.truncate("a" * 2000, 1024)
    assert_equal 1024, text.bytesize
    assert text.start_with?("aaa")
    assert text.end_with?("…[truncated]")
  end

  def test_truncate_keep_end_marks_the_start
    text = W.truncate(("x" * 5000) + "LAST LINE", 4096, keep: :end)
    assert_operator text.bytesize, :<=, 4096
    assert text.start_with?("…[truncated]")
    assert text.end_with?("LAST LINE")
  end

  def test_truncate_never_splits_a_character
    text = W.truncate("é" * 1000, 1024) # 2 bytes each
    assert text.valid_encoding?
    assert_operator text.bytesize, :<=, 1024
    tail = W.truncate("é" * 3000, 4096, keep: :end)
    assert tail.valid_encoding?
    assert_operator tail.bytesize, :<=, 4096
  end

  def test_short_text_is_unchanged
    assert_equal "short", W.truncate("short", 1024)
  end

  def test_long_error_messages_and_tracebacks_are_cut
    copy = fail(delivery, RuntimeError.new("m" * 5000))
    assert_equal 1024, copy.headers["leveret-error-message"].bytesize
    assert_operator copy.headers["leveret-error-traceback"].bytesize, :<=, 4096
  end

  # --- the 64 KiB budget -----------------------------------------------------------

  def test_fit_drops_traceback_first
    headers = { "leveret-retry-count" => 1, "leveret-error-traceback" => "t" * 100, "app" => "a" * 50 }
    W.fit!(headers, W.encoded_size(headers) - 10)
    refute headers.key?("leveret-error-traceback")
    assert_equal "a" * 50, headers["app"]
    refute headers.key?("leveret-dropped-headers")
  end

  def test_fit_drops_the_largest_application_headers_and_names_them
    headers = { "leveret-reason" => "handler-error", "big" => "b" * 40_000, "bigger" => "c" * 50_000, "small" => "s" }
    W.fit!(headers, 64 * 1024)
    refute headers.key?("bigger")
    assert headers.key?("big")
    assert headers.key?("small")
    assert_equal "bigger", headers["leveret-dropped-headers"]
    assert_operator W.encoded_size(headers), :<=, 64 * 1024
  end

  def test_fit_never_drops_leveret_headers
    headers = { "leveret-error-message" => "m" * 1000, "a" => "x" * 70_000, "b" => "y" * 70_000 }
    W.fit!(headers, 64 * 1024)
    assert headers.key?("leveret-error-message")
    assert_equal "a,b", headers["leveret-dropped-headers"].split(",").sort.join(",")
  end

  def test_failure_keeps_the_copy_under_64_kib
    headers = { "leveret-version" => 1, "blob" => "z" * 200_000 }
    copy = fail(delivery(headers: headers))
    assert_operator W.encoded_size(copy.headers), :<=, W::MAX_HEADERS
    assert_equal "blob", copy.headers["leveret-dropped-headers"]
  end

  def test_encoded_size_is_the_amqp_table_size
    # 4 (table length) + 1 + 1 (key) + 1 (type) + 8 (int64)
    assert_equal 15, W.encoded_size("k" => 1)
  end

  # --- properties -----------------------------------------------------------------

  def test_copy_properties
    props = { content_type: "application/json", delivery_mode: 1, message_id: "m-1", type: "t",
              timestamp: Time.at(1_700_000_000), expiration: "60000", user_id: "guest", priority: 3,
              correlation_id: "c", reply_to: "r", app_id: "a", content_encoding: "utf-8" }
    out = W.copy_properties(props, { "h" => 1 })
    assert_equal 2, out[:delivery_mode]
    refute out.key?(:expiration)
    refute out.key?(:user_id)
    assert_equal "m-1", out[:message_id]
    assert_equal 1_700_000_000, out[:timestamp]
    assert_equal({ "h" => 1 }, out[:headers])
    %i[content_type type priority correlation_id reply_to app_id content_encoding].each do |key|
      assert_equal props[key], out[key], key
    end
  end

  def test_copy_properties_stamps_a_missing_timestamp
    out = W.copy_properties({ message_id: "m" }, {}, now: Time.at(42))
    assert_equal 42, out[:timestamp]
  end

  def test_publish_properties
    out = W.publish_properties(type: "demo.export", version: 1, now: Time.at(7),
                               headers: { "leveret-retry-count" => 5, "tenant" => "acme" })
    assert_equal "application/json", out[:content_type]
    assert_equal 2, out[:delivery_mode]
    assert_match(/\A\h{8}-\h{4}-4\h{3}-\h{4}-\h{12}\z/, out[:message_id])
    assert_equal "demo.export", out[:type]
    assert_equal 7, out[:timestamp]
    assert_equal({ "tenant" => "acme", "leveret-version" => 1 }, out[:headers])
  end

  def test_publish_properties_needs_an_integer_version
    assert_raises(ArgumentError) { W.publish_properties(type: "t", version: "1") }
  end

  # --- small helpers ----------------------------------------------------------------

  def test_timestamp_format
    assert_equal "2026-01-02T03:04:05.123+00:00", W.timestamp(NOW)
    assert_match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00\z/, W.timestamp)
  end

  def test_redact_hides_passwords
    assert_equal "amqp://guest:***@localhost:5672/", W.redact("amqp://guest:guest@localhost:5672/")
    assert_equal "failed: amqps://u:***@h/vh and amqp://v:***@g",
                 W.redact("failed: amqps://u:s3cr%40t@h/vh and amqp://v:p@g")
    assert_equal "amqp://localhost", W.redact("amqp://localhost")
  end

  def test_bunny_url_reads_a_trailing_slash_as_the_default_vhost
    assert_equal "amqp://guest:guest@localhost:5672", W.bunny_url("amqp://guest:guest@localhost:5672/")
    assert_equal "amqp://h/%2F", W.bunny_url("amqp://h/%2F")
    assert_equal "amqp://h/vhost", W.bunny_url("amqp://h/vhost")
    assert_equal "amqps://h?cacertfile=/ca.pem", W.bunny_url("amqps://h/?cafile=/ca.pem")
  end

  def test_json_content_type
    assert W.json_content_type?("application/json")
    assert W.json_content_type?("Application/JSON; charset=utf-8")
    refute W.json_content_type?(nil)
    refute W.json_content_type?("text/plain")
    refute W.json_content_type?("application/json-patch+json")
  end

  def test_required_topology
    assert_equal [[:queue, "q"], [:exchange, "q.retry"], [:exchange, "q.dead"], [:queue, "q.dlq"]], W.required("q")
  end
end
