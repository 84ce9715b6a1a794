# frozen_string_literal: true

require "json"

module Leveret
  # Parse a message body as strict RFC 8259 JSON.
  #
  # Ruby's JSON parser (2.6) is lenient in two ways that another consumer of the
  # same queue would not be: it skips /* */ and // comments, and it accepts any
  # escaped character in a string ("\x" reads as "x"). A body that leveret's
  # Python worker dead-letters as invalid-json must not be processed here, so
  # those two are rejected before parsing.
  module StrictJSON
    ESCAPABLE = '"\\/bfnrtu'.bytes.freeze
    QUOTE = '"'.ord
    BACKSLASH = "\\".ord
    SLASH = "/".ord

    module_function

    # @param body [String] the raw bytes of a message body
    # @return [Object] the decoded value (Hash, Array, String, Numeric, true, false, nil)
    # @raise [Leveret::DecodeError] the body is not UTF-8 or not strict JSON
    def parse(body)
      text = body.dup.force_encoding(Encoding::UTF_8)
      raise DecodeError, "body is not valid UTF-8" unless text.valid_encoding?

      check_lexically!(text)
      JSON.parse(text, max_nesting: 100, create_additions: false, allow_nan: false)
    rescue JSON::ParserError => e
      raise DecodeError, "body is not valid JSON: #{e.message.lines.first.to_s.strip[0, 200]}"
    end

    # Reject what Ruby's parser would wrongly accept: comments and unknown escapes.
    def check_lexically!(text)
      return unless text.include?("/") || text.include?("\\")

      in_string = false
      escaped = false
      text.each_byte.with_index do |byte, index|
        if in_string
          if escaped
            raise DecodeError, "body is not valid JSON: bad escape at byte #{index}" unless ESCAPABLE.include?(byte)

            escaped = false
          elsif byte == BACKSLASH
            escaped = true
          elsif byte == QUOTE
            in_string = false
          end
        elsif byte == QUOTE
          in_string = true
        elsif byte == SLASH
          raise DecodeError, "body is not valid JSON: comment at byte #{index}"
        end
      end
    end
  end
end
