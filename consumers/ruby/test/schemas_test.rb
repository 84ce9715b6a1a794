# frozen_string_literal: true

require "test_helper"
require "tmpdir"

class SchemasTest < Minitest::Test
  include TestSupport

  def test_indexes_every_file_by_type_and_version
    on_disk = Dir.glob(File.join(SCHEMAS_DIR, "*.v*.json")).map { |f| File.basename(f).sub(/\.v\d+\.json\z/, "") }
    assert_equal on_disk.uniq.sort, schemas.types
    assert_includes schemas.types, "leveret.job.status"
    assert_equal [1, 2], schemas.versions("demo.export")
  end

  def test_a_nested_definition_is_validated
    event = { "job_id" => "j", "state" => "started", "at" => "2026-01-02T03:04:05.123456+00:00", "batch_size" => 2,
              "then" => { "exchange" => "x", "routing_key" => "k", "type" => "a.b", "version" => 1,
                          "message_id" => "m", "body" => "{}" } }
    assert schemas.valid?("leveret.job.status", 1, event)
    refute schemas.valid?("leveret.job.status", 1, event.merge("then" => { "exchange" => "x" }))
    refute schemas.valid?("leveret.job.status", 1, event.merge("at" => "yesterday"))
  end

  def test_validation_is_strict_about_integers
    assert schemas.valid?("demo.export", 1, { "user_id" => 1 })
    refute schemas.valid?("demo.export", 1, { "user_id" => "1" })
    refute schemas.valid?("demo.export", 1, { "user_id" => 1.0 })
    refute schemas.valid?("demo.export", 1, { "user_id" => true })
    refute schemas.valid?("demo.export", 1, { "user_id" => 0 })
  end

  def test_receipt_schema
    assert schemas.valid?("leveret.conformance.receipt", 1, { "message_id" => "m", "attempt" => 2, "consumer" => "ruby" })
    refute schemas.valid?("leveret.conformance.receipt", 1, { "message_id" => "m", "attempt" => 0, "consumer" => "ruby" })
  end

  def test_the_error_names_type_version_and_field
    error = assert_raises(Leveret::SchemaViolation) { schemas.validate!("demo.export", 1, { "format" => "pdf" }) }
    assert_match(/\Ademo\.export v1: /, error.message)
    assert_match(/user_id/, error.message)
    assert_match(/format/, error.message)
  end

  def test_a_file_must_carry_the_annotations_and_be_named_after_them
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, "a.v1.json"), '{"type": "object"}')
      assert_raises(Leveret::ConfigurationError) { Leveret::Schemas.load(dir) }
      File.write(File.join(dir, "a.v1.json"), '{"x-leveret-type": "b", "x-leveret-version": 1}')
      assert_raises(Leveret::ConfigurationError) { Leveret::Schemas.load(dir) }
    end
  end

  def test_missing_directory
    assert_raises(Leveret::ConfigurationError) { Leveret::Schemas.load("/nonexistent/schemas") }
  end
end
