# frozen_string_literal: true

require "net/http"
require_relative "test_helper"

# The health rules with the test's own clock, what the probes answer, and what
# /metrics shows: no broker.
class HealthTest < Minitest::Test
  def connected(now: 0.0, **options)
    Leveret::Health.new(queues: ["q"], now: now, **options).tap do |h|
      h.connection_up(now)
      h.checked({ "q" => 1 }, { "q" => 0 }, now)
    end
  end

  def test_unready_until_connected_and_consuming
    h = Leveret::Health.new(queues: ["q"], now: 0.0)
    assert_equal "not connected to the broker", h.readiness(0.0).reason
    h.connection_up(1.0)
    assert_equal "no consumer registered on q", h.readiness(1.0).reason
    h.checked({ "q" => 1 }, { "q" => 0 }, 1.0)
    assert_equal Leveret::Health::Verdict.new(true, ""), h.readiness(1.0)
  end

  def test_an_idle_worker_on_an_empty_queue_never_stalls
    h = connected(stall_after: 10)
    (0...1000).step(5) { |t| h.checked({ "q" => 1 }, { "q" => 0 }, t.to_f) }
    assert h.readiness(1000.0).ok
    assert h.liveness(1000.0).ok
  end

  def test_stalled_when_messages_wait_and_nothing_settles
    h = connected(stall_after: 10)
    # The clock starts when work appears, not at the last settle.
    h.checked({ "q" => 1 }, { "q" => 4 }, 100.0)
    assert h.readiness(105.0).ok
    h.checked({ "q" => 1 }, { "q" => 4 }, 111.0)
    verdict = h.readiness(111.0)
    refute verdict.ok
    assert verdict.reason.start_with?("stalled: 4 message(s) waiting and none settled for 11s (limit 10s)"), verdict.reason
    h.settled(112.0)
    assert h.readiness(112.0).ok
  end

  def test_steady_progress_through_a_backlog_is_healthy
    h = connected(stall_after: 10)
    (100...200).each do |t|
      h.checked({ "q" => 1 }, { "q" => 500 }, t.to_f)
      h.settled(t.to_f)
    end
    assert h.readiness(200.0).ok
  end

  def test_liveness_fails_only_after_the_grace
    h = connected(grace: 30)
    h.connection_down(50.0)
    refute h.readiness(50.0).ok
    assert h.liveness(79.0).ok
    dead = h.liveness(81.0)
    refute dead.ok
    assert_equal "not connected to the broker for 31s (grace 30s)", dead.reason
    h.connection_up(82.0)
    h.checked({ "q" => 1 }, { "q" => 0 }, 82.0)
    assert h.liveness(82.0).ok
  end

  def test_a_draining_worker_is_unready_but_live
    h = connected
    h.draining(10.0)
    assert_equal "the worker is shutting down", h.readiness(10.0).reason
    assert h.liveness(1000.0).ok
  end

  def test_metrics_count_outcomes_by_queue_type_and_outcome
    m = Leveret::Metrics.new
    2.times { m.received("q") }
    m.settled("q", "demo.export", "processed", 0.003)
    m.settled("q", nil, "dead_lettered", 0.2)
    m.checked("q", 2, 7)
    m.connected(true, reconnect: true)
    text = m.render
    [
      'leveret_messages_total{queue="q",type="demo.export",outcome="processed"} 1.0',
      'leveret_messages_total{queue="q",type="unknown",outcome="dead_lettered"} 1.0',
      'leveret_handler_duration_seconds_bucket{queue="q",type="demo.export",le="0.001"} 0.0',
      'leveret_handler_duration_seconds_bucket{queue="q",type="demo.export",le="0.005"} 1.0',
      'leveret_handler_duration_seconds_bucket{queue="q",type="demo.export",le="+Inf"} 1.0',
      'leveret_handler_duration_seconds_count{queue="q",type="demo.export"} 1.0',
      'leveret_messages_in_flight{queue="q"} 0.0',
      'leveret_queue_messages{queue="q",role="work"} 7.0',
      'leveret_queue_consumers{queue="q",role="work"} 2.0',
      "leveret_worker_connected 1.0",
      "leveret_reconnects_total 1.0",
      "# TYPE leveret_reconnects_total counter"
    ].each { |line| assert_includes text.lines.map(&:chomp), line }
  end

  def test_label_values_are_escaped
    m = Leveret::Metrics.new
    m.settled("a\"b\\c\nd", "t", "processed", 1.0)
    assert_includes m.render, 'queue="a\\"b\\\\c\\nd"'
  end

  def test_the_server_answers_probes_over_http
    now = 0.0
    health = Leveret::Health.new(queues: ["q"], now: now)
    metrics = Leveret::Metrics.new
    server = Leveret::ProbeServer.new(health: health, metrics: metrics, port: 0, clock: -> { now })
    port = server.start
    http = ->(path) { Net::HTTP.get_response(URI("http://127.0.0.1:#{port}#{path}")) }
    begin
      unready = http.call("/readyz")
      assert_equal "503", unready.code
      assert_equal "application/json", unready["Content-Type"]
      assert_equal({ "status" => "failing", "reason" => "not connected to the broker" }, JSON.parse(unready.body))
      assert_equal "200", http.call("/livez").code
      assert_equal "404", http.call("/nope").code
      health.connection_up(now)
      health.checked({ "q" => 1 }, { "q" => 0 }, now)
      assert_equal %({"status":"ok","reason":""}\n), http.call("/readyz?verbose=1").body
      scrape = http.call("/metrics")
      assert_equal Leveret::Metrics::CONTENT_TYPE, scrape["Content-Type"]
      assert_includes scrape.body.lines, "leveret_worker_ready 1.0\n"
      post = Net::HTTP.start("127.0.0.1", port) { |h| h.post("/livez", "") }
      assert_equal "405", post.code
    ensure
      server.close
    end
  end
end
