# frozen_string_literal: true

require "test_helper"

# W3C trace context on messages: reading a traceparent, a new trace, a child,
# and which trace headers a delivery's follow-ups, its copies and a
# publisher's messages carry.
class TraceTest < Minitest::Test
  include TestSupport

  TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
  PARENT_ID = "00f067aa0ba902b7"
  GIVEN = "00-#{TRACE_ID}-#{PARENT_ID}-01".freeze
  T = Leveret::Trace

  def test_parse_reads_version_00
    context = T.parse(GIVEN)
    assert_equal [TRACE_ID, PARENT_ID, "01"], [context.trace_id, context.parent_id, context.flags]
    assert_equal GIVEN, context.traceparent
    assert_equal "00", T.parse("00-#{TRACE_ID}-#{PARENT_ID}-00").flags
  end

  def test_parse_refuses_anything_else
    [
      nil, 42, "",
      "01-#{TRACE_ID}-#{PARENT_ID}-01", # another version
      "ff-#{TRACE_ID}-#{PARENT_ID}-01",
      "00-#{TRACE_ID.upcase}-#{PARENT_ID}-01", # upper case
      "00-#{TRACE_ID[1..]}-#{PARENT_ID}-01", # short trace-id
      "00-#{TRACE_ID}-#{PARENT_ID}0-01", # long parent-id
      "00-#{TRACE_ID}-#{PARENT_ID}-1",
      "00-#{TRACE_ID}-#{PARENT_ID}-01-extra",
      " #{GIVEN}", "#{GIVEN}\n",
      "00-#{'0' * 32}-#{PARENT_ID}-01", # all-zero trace-id
      "00-#{TRACE_ID}-#{'0' * 16}-01", # all-zero parent-id
      "00-#{TRACE_ID.sub('4', 'g')}-#{PARENT_ID}-01"
    ].each { |value| assert_nil T.parse(value), value.inspect }
  end

  def test_a_new_trace_has_random_ids_and_flags_01
    a = T.root
    b = T.root
    assert_equal "01", a.flags
    refute_nil T.parse(a.traceparent)
    refute_equal a.trace_id, b.trace_id
    refute_equal a.parent_id, b.parent_id
  end

  def test_a_child_keeps_the_trace_and_flags_with_a_parent_id_of_its_own
    parent = T.parse("00-#{TRACE_ID}-#{PARENT_ID}-00")
    child = T.child(parent)
    assert_equal [TRACE_ID, "00"], [child.trace_id, child.flags]
    refute_equal PARENT_ID, child.parent_id
    refute_nil T.parse(child.traceparent)
    refute_equal child.parent_id, T.child(parent).parent_id
  end

  def test_a_delivery_with_a_traceparent_belongs_to_its_trace_with_its_tracestate
    trace = T.of("traceparent" => GIVEN, "tracestate" => "congo=t61rcWkgMzE")
    assert_equal [TRACE_ID, PARENT_ID, "congo=t61rcWkgMzE"], [trace.trace_id, trace.parent_id, trace.tracestate]
  end

  def test_a_delivery_without_a_valid_one_starts_a_new_trace_without_the_tracestate
    [nil, {}, { "traceparent" => "garbage", "tracestate" => "congo=1" }].each do |headers|
      trace = T.of(headers)
      assert_equal "01", trace.flags
      refute_equal TRACE_ID, trace.trace_id
      assert_nil trace.tracestate
    end
  end

  def test_follow_ups_continue_the_trace_with_new_parent_ids_and_the_tracestate
    trace = T.of("traceparent" => GIVEN, "tracestate" => "congo=t61rcWkgMzE")
    a = T.follow_up_headers(trace)
    b = T.follow_up_headers(trace)
    assert_equal "congo=t61rcWkgMzE", a["tracestate"]
    [a, b].each do |headers|
      sent = T.parse(headers["traceparent"])
      assert_equal [TRACE_ID, "01"], [sent.trace_id, sent.flags]
      refute_equal PARENT_ID, sent.parent_id
    end
    refute_equal a["traceparent"], b["traceparent"]
  end

  def test_the_follow_ups_of_a_delivery_without_one_share_one_new_trace
    trace = T.of({})
    ids = Array.new(3) { T.parse(T.follow_up_headers(trace)["traceparent"]).trace_id }.uniq
    assert_equal [trace.trace_id], ids
    assert_equal ["traceparent"], T.follow_up_headers(trace).keys
  end

  def test_a_copy_keeps_the_trace_headers_unchanged
    headers = { "leveret-version" => 1, "traceparent" => GIVEN, "tracestate" => "congo=1" }
    copy = Leveret::Wire.failure(delivery(headers: headers), "jobs", RuntimeError.new("boom"), consumer: "jobs@h:1")
    assert_equal GIVEN, copy.headers["traceparent"]
    assert_equal "congo=1", copy.headers["tracestate"]
    # A delivery without one gets none in its copy: the copy is the message, not a follow-up.
    bare = Leveret::Wire.failure(delivery, "jobs", RuntimeError.new("boom"), consumer: "jobs@h:1")
    refute bare.headers.key?("traceparent")
  end

  def test_a_published_message_starts_a_new_trace
    headers = T.publish_headers("tenant" => "a")
    assert_equal ["traceparent"], headers.keys
    assert_equal "01", T.parse(headers["traceparent"]).flags
    refute_equal headers, T.publish_headers(nil)
  end

  def test_a_published_message_continues_the_callers_traceparent
    headers = T.publish_headers(traceparent: GIVEN, tracestate: "congo=1") # symbol keys too
    sent = T.parse(headers["traceparent"])
    assert_equal TRACE_ID, sent.trace_id
    refute_equal PARENT_ID, sent.parent_id
    assert_equal "congo=1", headers["tracestate"]
  end

  def test_an_invalid_caller_traceparent_is_replaced_by_a_new_trace
    caller = { "traceparent" => "00-#{'0' * 32}-#{PARENT_ID}-01", "tracestate" => "x=1", "tenant" => "a" }
    merged = T.merge(caller, T.publish_headers(caller))
    assert_equal %w[tenant traceparent], merged.keys.sort
    refute_nil T.parse(merged["traceparent"])
  end
end
