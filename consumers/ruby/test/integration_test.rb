# frozen_string_literal: true

require "test_helper"
require "task_publisher"
require "open3"
require "securerandom"
require "tempfile"
require "timeout"
require "uri"

# The worker (a subprocess, as in production) and the publisher against a real
# RabbitMQ: 127.0.0.1:5672, or LEVERET_TEST_URL. Each test declares a topology
# of its own under a unique name, mirroring leveret/topology.py (tiers of 200
# and 400 ms, 3 attempts), and deletes it afterwards.
#
# Without a broker the tests are skipped, except under CI (CI set), where they fail.
class IntegrationTest < Minitest::Test
  include TestSupport

  # With no credentials in it, the URL logs in as Bunny's defaults (RabbitMQ's default
  # user); they are written in, so that the checks that no output shows the password
  # check a real one.
  URL = URI(ENV.fetch("LEVERET_TEST_URL", "amqp://127.0.0.1:5672/")).tap do |uri|
    uri.userinfo ||= "#{Bunny::Session::DEFAULT_USER}:#{Bunny::Session::DEFAULT_PASSWORD}"
  end.to_s.freeze
  LOGIN = URI(URL).userinfo
  WORKER = File.join(TestSupport::ROOT, "worker.rb")
  TIERS = [200, 400].freeze
  MAX_ATTEMPTS = 3
  WAIT = 20
  TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
  PARENT_ID = "00f067aa0ba902b7"
  TRACEPARENT = "00-#{TRACE_ID}-#{PARENT_ID}-01".freeze
  # The tests that make the broker nack a queue's publishes (a policy; it works
  # on classic queues only) run on a topology of classic queues.
  CLASSIC = %w[test_a_nacked_copy_is_sent_again_until_the_broker_takes_it
               test_a_copy_still_nacked_after_the_patience_is_dead_lettered].freeze

  def setup
    @conn = Bunny.new(Leveret::Wire.bunny_url(URL), logger: Logger.new(nil), automatically_recover: false)
    begin
      @conn.start
    rescue Bunny::TCPConnectionFailed, Bunny::TCPConnectionFailedForAllHosts, SystemCallError => e
      flunk("no RabbitMQ at #{Leveret::Wire.redact(URL)}: #{e.class}") if ENV["CI"]
      skip("no RabbitMQ at #{Leveret::Wire.redact(URL)} (#{e.class}); set LEVERET_TEST_URL")
    end
    @ch = @conn.create_channel
    @q = "leveret.rubytest.#{SecureRandom.hex(4)}"
    @exchange = "#{@q}.ex"
    @receipts = "#{@q}.receipts"
    @declared_queues = []
    @declared_exchanges = []
    @policies = []
    declare_topology(classic: CLASSIC.include?(name))
    @dead = {}
    @receipt_log = Hash.new { |h, k| h[k] = [] }
  end

  def teardown
    stop_worker
    @policies&.each { |policy| rabbitmqctl("clear_policy", policy) }
    return unless @conn&.open?

    ch = @conn.create_channel
    @declared_queues.each { |q| ch.queue_delete(q) }
    @declared_exchanges.each { |x| ch.exchange_delete(x) }
    @conn.close
  end

  # --- the tests ---------------------------------------------------------------------

  def test_worker_follows_the_contract_end_to_end
    start_worker

    # A task failing once is retried through tier 1 and processed on attempt 2.
    once = publish_conformance("fail_times" => 1)
    wait_for("a receipt for #{once}") { receipts[once].any? }
    receipt = receipts[once].first
    assert_equal 2, receipt[:body]["attempt"]
    assert_equal "ruby", receipt[:body]["consumer"]
    assert_equal once, receipt[:body]["message_id"]
    assert_equal "leveret.conformance.receipt", receipt[:props].type
    assert_equal "application/json", receipt[:props].content_type
    assert_equal 2, receipt[:props].delivery_mode
    assert_equal 1, receipt[:props].headers["leveret-version"]
    assert_kind_of Integer, receipt[:props].headers["leveret-version"]
    refute_nil receipt[:props].timestamp
    # It came without a traceparent: the receipt carries the new trace the log line names.
    trace = Leveret::Trace.parse(receipt[:props].headers["traceparent"])
    refute_nil trace
    processed = worker_events.find { |e| e["event"] == "message.processed" && e["message_id"] == once }
    assert_equal processed["trace_id"], trace.trace_id

    # A task failing always is retried through every tier, then dead-lettered.
    started = monotonic
    always = publish_conformance({ "fail_times" => 99 }, { "leveret-version" => 1, "traceparent" => TRACEPARENT })
    letter = dead_letter(always)
    h = letter[:props].headers
    assert_equal TRACEPARENT, h["traceparent"], "every copy keeps the traceparent unchanged"
    assert_equal MAX_ATTEMPTS, h["leveret-retry-count"]
    assert_kind_of Integer, h["leveret-retry-count"]
    assert_equal "handler-error", h["leveret-reason"]
    assert_equal "failing on purpose: attempt 3 of 99", h["leveret-error-message"]
    assert_equal "Leveret::Demo::ConformanceFailure", h["leveret-error-type"]
    assert_equal @exchange, h["leveret-original-exchange"]
    assert_equal "conformance", h["leveret-original-routing-key"]
    assert_equal @q, h["leveret-failed-queue"]
    assert_match(/\A#{Regexp.escape(@q)}@.+:\d+\z/, h["leveret-failed-by"])
    assert_match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00\z/, h["leveret-first-failed-at"])
    assert_operator h["leveret-first-failed-at"], :<, h["leveret-last-failed-at"]
    assert h.key?("leveret-error-traceback")
    # A consumer's copy carries no x- header of its own (the DLQ, a quorum
    # queue, adds its x-delivery-count on the way out).
    assert_empty h.keys.grep(/\Ax-/) - ["x-delivery-count"]
    assert_equal 1, h["leveret-version"]
    assert_equal always, letter[:props].message_id
    assert_equal 2, letter[:props].delivery_mode
    assert_operator monotonic - started, :>=, TIERS.sum / 1000.0 * 0.9, "it waited in every tier"
    assert_empty receipts[always]

    # Invalid JSON goes to the DLQ at once, no retry.
    bad = publish_raw("{not json")
    letter = dead_letter(bad)
    assert_equal "invalid-json", letter[:props].headers["leveret-reason"]
    assert_equal 1, letter[:props].headers["leveret-retry-count"]
    refute letter[:props].headers.key?("leveret-error-traceback")
    assert_equal "{not json", letter[:body]

    # A message without leveret-version: unknown-version.
    unversioned = publish_raw("{}", headers: {})
    assert_equal "unknown-version", dead_letter(unversioned)[:props].headers["leveret-reason"]

    # A task published with TaskPublisher is processed.
    TaskPublisher.configure(url: URL, schemas_dir: SCHEMAS_DIR, exchange: @exchange)
    export = TaskPublisher.publish_export_task(7, "xlsx")
    assert_match(/\A\h{8}-\h{4}-4\h{3}-\h{4}-\h{12}\z/, export)
    wait_for("the export to be processed") { worker_events.any? { |e| e["event"] == "message.processed" && e["message_id"] == export } }
    written = worker_events.find { |e| e["event"] == "demo.export_written" && e["message_id"] == export }
    assert_equal 7, written["user_id"]
    assert_equal "xlsx", written["format"]
    assert_equal 0, depth(@q)
    refute dead_letters.key?(export)

    # Every outcome was logged as one JSON line, and the password never was.
    outcomes = worker_events.select { |e| e["event"].start_with?("message.") }.map { |e| e["message_id"] }
    [once, always, bad, unversioned, export].each { |id| assert_includes outcomes, id }
    refute_includes File.read(@stderr.path), LOGIN

    # SIGTERM: the worker stops cleanly.
    Process.kill("TERM", @worker)
    status = wait_worker_exit
    assert_equal 0, status.exitstatus, File.read(@stderr.path)
    assert(worker_events.any? { |e| e["event"] == "worker.stopped" })
  end

  def test_a_receipt_continues_the_task_trace
    start_worker
    headers = { "leveret-version" => 1, "traceparent" => "00-#{TRACE_ID}-#{PARENT_ID}-00", "tracestate" => "congo=t61rcWkgMzE" }
    task = publish_conformance({ "note" => "traced" }, headers)
    wait_for("a receipt for #{task}") { receipts[task].any? }
    props = receipts[task].first[:props]
    sent = Leveret::Trace.parse(props.headers["traceparent"])
    assert_equal [TRACE_ID, "00"], [sent.trace_id, sent.flags]
    refute_equal PARENT_ID, sent.parent_id
    assert_equal "congo=t61rcWkgMzE", props.headers["tracestate"]
    wait_for("the log line of #{task}") { worker_events.any? { |e| e["event"] == "message.processed" && e["message_id"] == task } }
    line = worker_events.find { |e| e["event"] == "message.processed" && e["message_id"] == task }
    assert_equal TRACE_ID, line["trace_id"]
  end

  def test_sigterm_mid_handler_finishes_acks_and_exits_zero
    start_worker
    task = publish_conformance("sleep_ms" => 1500)
    wait_for("the worker to take the task") { depth(@q).zero? }
    sleep 0.3
    Process.kill("TERM", @worker)
    status = wait_worker_exit
    assert_equal 0, status.exitstatus
    wait_for("the receipt of the task in flight") { receipts[task].any? }
    assert_equal 0, depth(@q), "the task was acked, not requeued"
  end

  def test_an_unconfirmed_copy_rejects_the_delivery_without_requeue
    start_worker
    # Remove Q.retry under the running worker: the copy's publish gets a 404.
    @ch.exchange_delete("#{@q}.retry")
    task = publish_conformance("fail_times" => 1)
    letter = dead_letter(task)
    death = letter[:props].headers["x-death"]
    refute_nil death, "the broker dead-lettered it (basic.reject, requeue=false)"
    assert_equal "rejected", death.first["reason"]
    assert_equal @q, death.first["queue"]
    refute letter[:props].headers.key?("leveret-retry-count"), "no earlier failure, no leveret- headers"
    failed = worker_events.find { |e| e["event"] == "message.republish_failed" }
    assert_match(/does not exist/, failed["error"])
    # The worker goes on: its next copy goes out on a fresh channel.
    bad = publish_raw("{not json")
    assert_equal "invalid-json", dead_letter(bad)[:props].headers["leveret-reason"]
  end

  # The first retry tier refuses every publish: the worker sends the copy again
  # (on new channels) while the delivery waits unacked, and once the tier takes
  # it the task is retried and processed.
  def test_a_nacked_copy_is_sent_again_until_the_broker_takes_it
    refuse("#{@q}.retry.1")
    start_worker
    task = publish_conformance("fail_times" => 1)
    wait_for("the first refusal") { worker_events.any? { |e| e["event"] == "message.republish_refused" } }
    sleep 1.5 # a few resends
    refused = worker_events.select { |e| e["event"] == "message.republish_refused" }
    assert_equal 1, refused.size, "logged once a delivery"
    assert_equal "warning", refused.first["level"]
    assert_equal task, refused.first["message_id"]
    assert_equal "#{@q}.retry", refused.first["exchange"]
    assert_in_delta Leveret::Worker::REPUBLISH_PATIENCE, refused.first["sending_again_for"], 1.0
    assert_equal 1, unacked(@q), "the delivery waits unacked"
    assert_equal 0, depth(@q)
    assert_empty dead_letters
    assert_equal 0, depth("#{@q}.dlq")
    assert_empty worker_events.select { |e| e["event"] == "message.republish_failed" || e["message_id"] == task && e["outcome"] }
    assert_operator worker_channels, :<=, 3, "the nacked channels were closed"

    allow("#{@q}.retry.1")
    wait_for("a receipt for #{task}") { receipts[task].any? }
    assert_equal 2, receipts[task].first[:body]["attempt"]
    wait_for("the log line of #{task}") { worker_events.any? { |e| e["event"] == "message.processed" && e["message_id"] == task } }
    assert(worker_events.any? { |e| e["event"] == "message.retry_scheduled" && e["message_id"] == task })
    assert_empty dead_letters
    assert_equal 0, depth("#{@q}.dlq")
    assert_equal 0, unacked(@q)
    refute(worker_events.any? { |e| e["event"] == "message.republish_failed" })
    assert_operator worker_channels, :<=, 4, "no channel leaked"
  end

  # The tier keeps refusing past the worker's patience: the delivery is rejected
  # without requeue, and Q's dead-letter exchange sends it to Q.dlq.
  def test_a_copy_still_nacked_after_the_patience_is_dead_lettered
    refuse("#{@q}.retry.1")
    start_worker("LEVERET_REPUBLISH_PATIENCE" => "1")
    started = monotonic
    task = publish_conformance("fail_times" => 1)
    letter = dead_letter(task)
    assert_operator monotonic - started, :>=, 0.5, "it kept sending for most of the patience"
    death = letter[:props].headers["x-death"]
    refute_nil death, "the broker dead-lettered it (basic.reject, requeue=false)"
    assert_equal "rejected", death.first["reason"]
    assert_equal @q, death.first["queue"]
    refused = worker_events.select { |e| e["event"] == "message.republish_refused" }
    assert_equal 1, refused.size
    assert_in_delta 1.0, refused.first["sending_again_for"], 0.2
    wait_for("the failure's log line") { worker_events.any? { |e| e["event"] == "message.republish_failed" } }
    failed = worker_events.find { |e| e["event"] == "message.republish_failed" }
    assert_equal "#{@q}.retry", failed["exchange"]
    assert_match(/nacked/, failed["error"])
    assert_kind_of Numeric, failed["refused_for"]
    assert_operator failed["refused_for"], :>=, 0.5
    assert_operator failed["refused_for"], :<, 2.0
    wait_for("the log line of #{task}") { worker_events.any? { |e| e["event"] == "message.dead_lettered" && e["message_id"] == task } }
    assert_equal 0, unacked(@q)
    assert_empty receipts[task]
  end

  def test_publisher_errors
    publisher = TaskPublisher.new(url: URL, schemas_dir: SCHEMAS_DIR, log: Leveret::Log.new(StringIO.new))
    payload = { "user_id" => 1 }
    assert_raises(Leveret::Unroutable) do
      publisher.publish("demo.export", 1, payload, exchange: @exchange, routing_key: "nobody-listens")
    end
    assert_raises(Leveret::ExchangeMissing) do
      publisher.publish("demo.export", 1, payload, exchange: "#{@q}.no-such-exchange", routing_key: "export")
    end
    # The channel closed by the 404 is replaced: the next publish works.
    id = publisher.publish("demo.export", 1, payload, exchange: @exchange, routing_key: "export")
    wait_for("the task in the queue") { depth(@q) == 1 }
    _info, raw, body = @ch.basic_get(@q, manual_ack: false)
    props = Bunny::MessageProperties.new(raw)
    assert_equal id, props.message_id
    assert_equal({ "user_id" => 1 }, JSON.parse(body))
    assert_equal 1, props.headers["leveret-version"]
    assert_equal "demo.export", props.type
    assert_equal 2, props.delivery_mode
    assert_equal "01", Leveret::Trace.parse(props.headers["traceparent"])&.flags, "a new trace"

    # A caller's traceparent is the parent of the message's own.
    publisher.publish("demo.export", 1, payload, exchange: @exchange, routing_key: "export",
                                                 headers: { "traceparent" => TRACEPARENT })
    wait_for("the traced task in the queue") { depth(@q) == 1 }
    _info, raw, = @ch.basic_get(@q, manual_ack: false)
    sent = Leveret::Trace.parse(Bunny::MessageProperties.new(raw).headers["traceparent"])
    assert_equal TRACE_ID, sent.trace_id
    refute_equal PARENT_ID, sent.parent_id
  ensure
    publisher&.close
  end

  # Job status, with the worker in-process: demo.export tracked (user 13's
  # export fails once, then gives up), leveret.conformance not.
  def test_job_status
    @ch.exchange(Leveret::Status::EXCHANGE, type: :topic, durable: true) # shared: declared if absent, never deleted
    @status_queue = @ch.queue("", exclusive: true)
    app = Leveret::App.new(queue: @q, schemas: schemas)
    app.handle("demo.export", versions: [1], track: true) do |payload, ctx|
      next Leveret::Demo.export(payload, ctx) unless payload["user_id"] == 13
      raise "disk full" if ctx.attempt == 1

      raise Leveret::DeadLetter, "giving up"
    end
    app.handle("leveret.conformance", versions: [1]) { |payload, ctx| Leveret::Demo.conformance(payload, ctx) }
    worker = Leveret::Worker.new(app: app, url: URL, log: Leveret::Log.new(StringIO.new))
    thread = Thread.new { worker.run(install_signal_handlers: false) }
    wait_for("the worker to consume") { consumers(@q).positive? }

    id, events, traces = tracked_task('{"user_id": 5}', type: "demo.export", count: 4,
                                                        headers: { "leveret-version" => 1, "traceparent" => TRACEPARENT })
    assert_equal [["started", nil], ["progress", 50], ["progress", 100], ["succeeded", nil]],
                 events.map { |e| [e["state"], e["percent"]] }
    # Each event continues the task's trace, with a parent-id of its own.
    assert_equal [[TRACE_ID, "01"]] * 4, traces.map { |t| [t&.trace_id, t&.flags] }
    assert_equal 5, ([PARENT_ID] + traces.map(&:parent_id)).uniq.size
    assert_equal "wrote part 2 of 2", events[2]["message"]
    assert_equal "exports/#{id}.csv", events[3]["result"]

    _, events = tracked_task('{"user_id": 13}', type: "demo.export", count: 4)
    assert_equal [["started", 1, nil, nil], ["retrying", 1, nil, "disk full"], ["started", 2, nil, nil],
                  ["failed", 2, "dead-letter", "giving up"]],
                 events.map { |e| e.values_at("state", "attempt", "reason", "error") }

    _, events = tracked_task("{}", count: 2, headers: { "leveret-version" => 1, "leveret-batch-id" => "batch-1" })
    assert_equal [%w[started batch-1], %w[succeeded batch-1]], events.map { |e| e.values_at("state", "batch_id") }
  ensure
    worker&.stop
    thread&.join(WAIT)
  end

  # Job status when the worker knows the queue's max_attempts (LEVERET_MAX_ATTEMPTS):
  # a task failing every attempt reports "failed" after the last one, whose copy
  # still goes by Q.retry and on to Q.dlq through the alternate exchange.
  def test_job_status_with_max_attempts
    @ch.exchange(Leveret::Status::EXCHANGE, type: :topic, durable: true) # shared: declared if absent, never deleted
    @status_queue = @ch.queue("", exclusive: true)
    app = Leveret::App.new(queue: @q, schemas: schemas)
    app.handle("demo.export", versions: [1], track: true) { |_payload, _ctx| raise "disk full" }
    worker = Leveret::Worker.new(app: app, url: URL, max_attempts: MAX_ATTEMPTS, log: Leveret::Log.new(StringIO.new))
    thread = Thread.new { worker.run(install_signal_handlers: false) }
    wait_for("the worker to consume") { consumers(@q).positive? }

    id, events = tracked_task('{"user_id": 13}', type: "demo.export", count: 6)
    assert_equal [["started", 1, nil, nil], ["retrying", 1, nil, "disk full"],
                  ["started", 2, nil, nil], ["retrying", 2, nil, "disk full"],
                  ["started", 3, nil, nil], ["failed", 3, "handler-error", "disk full"]],
                 events.map { |e| e.values_at("state", "attempt", "reason", "error") }
    letter = dead_letter(id)
    assert_equal MAX_ATTEMPTS, letter[:props].headers["leveret-retry-count"]
    assert_equal "handler-error", letter[:props].headers["leveret-reason"]
  ensure
    worker&.stop
    thread&.join(WAIT)
  end

  def test_missing_topology_is_one_line_and_exit_1
    @stderr = Tempfile.new("worker")
    pid = Process.spawn({ "LEVERET_URL" => URL, "LEVERET_QUEUE" => "#{@q}.absent" }, RbConfig.ruby, WORKER,
                        err: @stderr.path, out: File::NULL)
    _, status = Timeout.timeout(WAIT) { Process.wait2(pid) }
    assert_equal 1, status.exitstatus
    lines = File.readlines(@stderr.path).map { |l| JSON.parse(l) }
    missing = lines.select { |l| l["event"] == "worker.topology_missing" }
    assert_equal 1, missing.size
    assert_match(/queue "#{Regexp.escape(@q)}\.absent".*run `leveret topology apply`/, missing.first["error"])
    # Nothing was declared: the queue still does not exist.
    ch = @conn.create_channel
    assert_raises(Bunny::NotFound) { ch.queue_declare("#{@q}.absent", passive: true) }
  end

  private

  # --- topology, as leveret/topology.py declares it ------------------------------------

  # classic: classic queues, with none of the quorum queues' arguments.
  def declare_topology(classic: false)
    dead = "#{@q}.dead"
    retry_x = "#{@q}.retry"
    quorum = classic ? {} : { "x-queue-type" => "quorum" }
    at_least_once = classic ? {} : { "x-dead-letter-strategy" => "at-least-once", "x-overflow" => "reject-publish" }

    exchange(@exchange, :direct)
    exchange(dead, :fanout)
    queue("#{@q}.dlq", quorum).bind(dead)
    exchange(retry_x, :headers, "alternate-exchange" => dead)
    limit = classic ? {} : { "x-delivery-limit" => 20 }
    work = queue(@q, quorum.merge(at_least_once, "x-dead-letter-exchange" => dead, **limit))
    work.bind(@exchange, routing_key: "conformance")
    work.bind(@exchange, routing_key: "export")
    TIERS.each_with_index do |ttl, i|
      tier = queue("#{@q}.retry.#{i + 1}", quorum.merge(at_least_once, "x-message-ttl" => ttl,
                                                                      "x-dead-letter-exchange" => "",
                                                                      "x-dead-letter-routing-key" => @q))
      # counts 1 .. MAX_ATTEMPTS-1 bound, the last tier repeating; count 3 matches nothing
      (1...MAX_ATTEMPTS).select { |k| [k, TIERS.size].min == i + 1 }.each do |count|
        tier.bind(retry_x, arguments: { "x-match" => "all", "leveret-retry-count" => count })
      end
    end
    exchange(@receipts, :fanout)
    queue(@receipts, {}).bind(@receipts)
  end

  def exchange(name, type, arguments = {})
    @declared_exchanges << name
    @ch.exchange(name, type: type, durable: true, arguments: arguments)
  end

  def queue(name, arguments)
    @declared_queues << name
    @ch.queue(name, durable: true, arguments: arguments)
  end

  # --- the worker subprocess ---------------------------------------------------------

  def start_worker(settings = {})
    @stderr = Tempfile.new("worker")
    env = { "LEVERET_URL" => URL, "LEVERET_QUEUE" => @q, "LEVERET_SCHEMAS" => SCHEMAS_DIR }.merge(settings)
    @worker = Process.spawn(env, RbConfig.ruby, WORKER, err: @stderr.path, out: File::NULL)
    wait_for("the worker to consume #{@q}") { consumers(@q).positive? }
  end

  def wait_worker_exit
    _, status = Timeout.timeout(WAIT) { Process.wait2(@worker) }
    @worker = nil
    status
  end

  def stop_worker
    return unless @worker

    Process.kill("TERM", @worker)
    Timeout.timeout(WAIT) { Process.wait(@worker) }
  rescue Timeout::Error
    Process.kill("KILL", @worker)
    Process.wait(@worker)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @worker = nil
  end

  def worker_events
    File.readlines(@stderr.path).filter_map do |line|
      JSON.parse(line)
    rescue JSON::ParserError
      nil
    end
  end

  # --- publishing and reading ----------------------------------------------------------

  def publish_conformance(payload, headers = { "leveret-version" => 1 })
    body = JSON.generate(payload.merge("receipt_exchange" => @receipts, "receipt_routing_key" => ""))
    publish_raw(body, headers: headers)
  end

  def publish_raw(body, type: "leveret.conformance", headers: { "leveret-version" => 1 }, id: SecureRandom.uuid)
    ch = @conn.create_channel
    ch.confirm_select
    ch.basic_publish(body, @exchange, "conformance",
                     content_type: "application/json", persistent: true, message_id: id, type: type,
                     timestamp: Time.now.to_i, headers: headers, mandatory: true)
    assert ch.wait_for_confirms, "the test's publish was confirmed"
    ch.close
    id
  end

  # Publish a task and return its id, its first `count` status events,
  # checked against the schema and in the order of their `at`, and the trace
  # context each carried.
  def tracked_task(body, count:, **options)
    id = SecureRandom.uuid
    @status_queue.bind(Leveret::Status::EXCHANGE, routing_key: id)
    publish_raw(body, id: id, **options)
    got = []
    wait_for("#{count} status events of #{id}") do
      drain(@status_queue.name) { |props, raw| got << [props, JSON.parse(raw)] }
      got.size >= count
    end
    got.each do |props, event|
      assert_equal ["leveret.job.status", 2], [props.type, props.delivery_mode]
      assert schemas.valid?("leveret.job.status", 1, event), event.inspect
      assert_equal id, event["job_id"]
      assert_match(/\.\d{6}\+00:00\z/, event["at"])
    end
    events = got.map(&:last)
    assert_equal events.sort_by { |e| e["at"] }, events
    [id, events, got.map { |props, _| Leveret::Trace.parse(props.headers["traceparent"]) }]
  end

  def receipts
    drain(@receipts) { |props, body| @receipt_log[JSON.parse(body)["message_id"]] << { props: props, body: JSON.parse(body) } }
    @receipt_log
  end

  def dead_letters
    drain("#{@q}.dlq") { |props, body| @dead[props.message_id] = { props: props, body: body } }
    @dead
  end

  def dead_letter(id)
    wait_for("#{id} in the dead-letter queue") { dead_letters.key?(id) }
    @dead[id]
  end

  def drain(queue)
    loop do
      info, props, body = @ch.basic_get(queue, manual_ack: false)
      break if info.nil?

      yield Bunny::MessageProperties.new(props), body
    end
  end

  def depth(queue) = @ch.queue_declare(queue, passive: true).message_count

  # --- making the broker nack (rabbitmqctl, on the test's broker) ----------------------

  # Every publish to `queue` (a classic queue) is nacked until #allow.
  def refuse(queue)
    policy = "#{queue}.refuse"
    @policies << policy
    rabbitmqctl("set_policy", policy, "^#{Regexp.escape(queue)}$", '{"max-length": 0, "overflow": "reject-publish"}',
                "--apply-to", "queues", "--priority", "100")
    wait_for("the policy on #{queue}") { queue_info(queue, "policy") == policy }
  end

  def allow(queue)
    policy = "#{queue}.refuse"
    rabbitmqctl("clear_policy", policy)
    @policies.delete(policy)
    wait_for("no policy on #{queue}") { queue_info(queue, "policy").to_s.empty? }
  end

  # Delivered to a consumer and not settled yet.
  def unacked(queue) = Integer(queue_info(queue, "messages_unacknowledged"))

  def queue_info(queue, item)
    rows = JSON.parse(rabbitmqctl("list_queues", "--formatter", "json", "name", item))
    rows.find { |row| row["name"] == queue }&.fetch(item)
  end

  # The channels open on the worker's connection.
  def worker_channels
    rows = JSON.parse(rabbitmqctl("list_connections", "--formatter", "json", "channels", "client_properties"))
    mine = rows.find { |row| row["client_properties"].to_s.include?(":#{@worker}") }
    refute_nil mine, "the worker's connection"
    mine["channels"]
  end

  def rabbitmqctl(*args)
    out, status = Open3.capture2e("rabbitmqctl", "-q", *args)
    assert status.success?, "rabbitmqctl #{args.join(' ')}: #{out}"
    out
  end

  def consumers(queue) = @ch.queue_declare(queue, passive: true).consumer_count

  def wait_for(what)
    deadline = monotonic + WAIT
    until yield
      if @worker && Process.waitpid(@worker, Process::WNOHANG)
        @worker = nil
        flunk("the worker exited while waiting for #{what}:\n#{File.read(@stderr.path)}")
      end
      flunk("timed out waiting for #{what}") if monotonic > deadline
      sleep 0.1
    end
  end

  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
end
