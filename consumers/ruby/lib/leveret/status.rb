# frozen_string_literal: true

require "json"
require "time"

module Leveret
  # Job status (docs/contract.md, "Job status"): leveret.job.status v1 events
  # on the topic exchange leveret.status, routing key = the job id (the task's
  # message id). Status is reported, never required.
  module Status
    EXCHANGE = "leveret.status"
    TYPE = "leveret.job.status"
    BATCH = "leveret-batch-id"

    module_function

    # ISO 8601 UTC to the microsecond: the status store orders a job's events by it.
    def timestamp(time = Time.now) = time.utc.strftime("%Y-%m-%dT%H:%M:%S.%6N+00:00")

    # The batch a delivery belongs to (its leveret-batch-id header), or nil.
    def batch_id(delivery)
      id = delivery.headers[BATCH]
      id.is_a?(String) ? id : nil
    end

    # One event of a delivery's job, with string keys; nil fields are left out.
    def event(delivery, state, at: timestamp, **fields)
      { "job_id" => delivery.message_id.to_s, "state" => state, "at" => at, "type" => delivery.type,
        "attempt" => delivery.attempt, "batch_id" => batch_id(delivery) }
        .merge(fields.transform_keys(&:to_s)).compact
    end

    # Publishes status events on the worker's confirm channels (validated,
    # persistent, mandatory, confirmed), continuing the delivery's trace
    # (`trace`, a Trace::Context). #report never raises: an event the
    # schema refuses (a result reference too long, say) is sent with the state
    # alone; a return (nothing bound to the job id) is logged at debug level,
    # any other failure as a warning.
    class Reporter
      def initialize(publisher:, schemas:, log:)
        @publisher = publisher
        @schemas = schemas
        @log = log
      end

      def report(delivery, state, trace:, **fields)
        event = Status.event(delivery, state, **fields)
        unless @schemas.valid?(TYPE, 1, event)
          @log.warning("status.invalid", job_id: event["job_id"], state: state)
          event = Status.event(delivery, state, at: event["at"])
          @schemas.validate!(TYPE, 1, event)
        end
        props = Wire.publish_properties(type: TYPE, version: 1, headers: Trace.follow_up_headers(trace),
                                        correlation_id: delivery.correlation_id || event["job_id"])
        @publisher.publish(JSON.generate(event), exchange: EXCHANGE, routing_key: event["job_id"], properties: props)
      rescue Unroutable
        @log.debug("status.unroutable", job_id: event["job_id"], state: state)
      rescue StandardError => e
        @log.warning("status.not_published", job_id: delivery.message_id, state: state, error: "#{e.class}: #{e.message}")
      end
    end
  end
end
