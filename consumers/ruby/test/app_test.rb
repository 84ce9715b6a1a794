# frozen_string_literal: true

require "test_helper"

# The contract's steps 1 to 5: which deliveries are permanent failures, and why.
class AppTest < Minitest::Test
  include TestSupport

  def setup
    @app = Leveret::App.new(queue: "q", schemas: schemas, max_size: 1024)
    Leveret::Demo.register(@app)
  end

  def reason_for(**kwargs)
    @app.resolve(delivery(**kwargs))
    nil
  rescue Leveret::MessageError => e
    e.reason
  end

  def test_a_valid_delivery_resolves_to_its_handler_and_payload
    handler, version, payload = @app.resolve(delivery(body: '{"fail_times": 1, "note": "hi"}'))
    assert_equal "leveret.conformance", handler.type
    assert_equal 1, version
    assert_equal({ "fail_times" => 1, "note" => "hi" }, payload)
  end

  def test_unknown_fields_are_ignored
    assert_nil reason_for(body: '{"added_later": true}')
  end

  def test_too_large
    assert_equal "too-large", reason_for(body: "{\"note\": \"#{'x' * 2000}\"}")
  end

  def test_size_is_checked_first
    assert_equal "too-large", reason_for(body: "x" * 2000, content_type: nil, type: nil)
  end

  def test_content_type
    assert_equal "invalid-content-type", reason_for(content_type: nil)
    assert_equal "invalid-content-type", reason_for(content_type: "text/plain")
    assert_nil reason_for(content_type: "Application/JSON; charset=utf-8")
  end

  def test_unknown_type
    assert_equal "unknown-type", reason_for(type: nil)
    assert_equal "unknown-type", reason_for(type: "")
    assert_equal "unknown-type", reason_for(type: "leveret.conformance.unknown")
    # known to the schemas, but no handler on this queue
    assert_equal "unknown-type", reason_for(type: "leveret.conformance.receipt")
  end

  def test_unknown_version
    assert_equal "unknown-version", reason_for(headers: {})
    assert_equal "unknown-version", reason_for(headers: nil)
    assert_equal "unknown-version", reason_for(headers: { "leveret-version" => "1" })
    assert_equal "unknown-version", reason_for(headers: { "leveret-version" => true })
    assert_equal "unknown-version", reason_for(headers: { "leveret-version" => 1.0 })
    assert_equal "unknown-version", reason_for(headers: { "leveret-version" => 99 })
    assert_equal "unknown-version", reason_for(type: "demo.export", headers: { "leveret-version" => 3 })
  end

  def test_version_is_checked_before_the_body
    assert_equal "unknown-version", reason_for(body: "{not json", headers: {})
  end

  def test_invalid_json
    assert_equal "invalid-json", reason_for(body: "{not json")
    assert_equal "invalid-json", reason_for(body: "")
    assert_equal "invalid-json", reason_for(body: "\xff\xfe{}".b)
    assert_equal "invalid-json", reason_for(body: '{"a": 1 /* comment */}')
  end

  def test_schema_violation
    assert_equal "schema-violation", reason_for(body: '{"fail_times": "1"}')
    assert_equal "schema-violation", reason_for(body: '{"fail_times": true}')
    assert_equal "schema-violation", reason_for(body: '{"fail_times": 1.0}')
    assert_equal "schema-violation", reason_for(body: '{"fail_times": -1}')
    assert_equal "schema-violation", reason_for(body: "[]")
    assert_equal "schema-violation", reason_for(body: "1")
    assert_equal "schema-violation", reason_for(type: "demo.export", body: "{}")
  end

  def test_both_export_versions_are_handled
    assert_nil reason_for(type: "demo.export", body: '{"user_id": 1}')
    assert_nil reason_for(type: "demo.export", body: '{"user_id": 1, "columns": ["id"]}',
                          headers: { "leveret-version" => 2 })
  end

  def test_handler_needs_a_schema_for_each_version
    app = Leveret::App.new(queue: "q", schemas: schemas)
    error = assert_raises(Leveret::ConfigurationError) { app.handle("demo.export", versions: [1, 7]) { nil } }
    assert_match(/demo\.export\.v7\.json/, error.message)
  end

  def test_one_handler_per_type
    assert_raises(Leveret::ConfigurationError) { @app.handle("demo.export", versions: [1]) { nil } }
  end
end
