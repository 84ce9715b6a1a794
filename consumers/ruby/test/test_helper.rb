# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "minitest/autorun"
require "leveret"

module TestSupport
  ROOT = File.expand_path("..", __dir__)
  SCHEMAS_DIR = File.expand_path("../../schemas", ROOT)

  def schemas = (@schemas ||= Leveret::Schemas.load(SCHEMAS_DIR))

  def delivery(body: "{}", type: "leveret.conformance", content_type: "application/json",
               headers: { "leveret-version" => 1 }, exchange: "ex", routing_key: "rk", message_id: "m-1")
    Leveret::Wire::Delivery.new(body: body, exchange: exchange, routing_key: routing_key, message_id: message_id,
                                type: type, content_type: content_type, correlation_id: nil,
                                redelivered: false, headers: headers)
  end
end
