# frozen_string_literal: true

require "json"
require "logger"
require "time"

module Leveret
  # One JSON object per line on stderr: {"ts", "level", "event", ...fields}.
  #
  # Every string goes through Leveret::Wire.redact first, so a broker URL in an
  # error message never shows its password.
  class Log
    LEVELS = %w[debug info warning error].freeze

    def initialize(io = $stderr, level: ENV.fetch("LEVERET_LOG_LEVEL", "info"))
      @io = io
      @min = LEVELS.index(level.to_s.downcase) || 1
      @mutex = Mutex.new
    end

    LEVELS.each_with_index do |name, index|
      define_method(name) do |event, **fields|
        write(name, event, fields) if index >= @min
      end
    end

    # A stdlib Logger whose lines are JSON too, for Bunny's own messages.
    def to_logger(level: Logger::WARN)
      log = self
      Logger.new(@io, level: level).tap do |logger|
        logger.formatter = proc do |severity, _time, _prog, msg|
          text = msg.is_a?(Exception) ? "#{msg.class}: #{msg.message}" : msg.to_s
          log.line(severity == "WARN" ? "warning" : severity.downcase, "bunny", { message: text })
        end
      end
    end

    # The JSON line for one event, newline included.
    def line(level, event, fields)
      record = { ts: Time.now.utc.iso8601(3), level: level, event: event }
      fields.each { |k, v| record[k] = clean(v) }
      "#{JSON.generate(record)}\n"
    end

    private

    def write(level, event, fields)
      text = line(level, event, fields)
      @mutex.synchronize { @io.write(text) }
    rescue IOError, SystemCallError
      nil # a closed stderr must not take a handler down with it
    end

    def clean(value)
      case value
      when String then Wire.redact(value.dup.force_encoding(Encoding::UTF_8).scrub)
      when Array then value.map { |v| clean(v) }
      when Hash then value.transform_values { |v| clean(v) }
      else value
      end
    end
  end
end
