# frozen_string_literal: true

require "test_helper"

class StrictJSONTest < Minitest::Test
  def parse(text) = Leveret::StrictJSON.parse(text)

  def test_parses_json
    assert_equal({ "a" => [1, 2.5, "x/y", "\\", nil, true] }, parse('{"a": [1, 2.5, "x\/y", "\\\\", null, true]}'))
    assert_equal "é", parse('"\u00e9"')
  end

  def test_rejects_what_rubys_parser_would_let_through
    ['{"a": 1 /* c */}', "{\"a\": 1 // c\n}", '"\x"', '{"a": "\q"}'].each do |text|
      assert_raises(Leveret::DecodeError, text) { parse(text) }
    end
  end

  def test_rejects_invalid_utf8_and_broken_json
    ["\xc3\x28".b, "{", "", "NaN", "[1,]", "{'a': 1}", "{} {}"].each do |text|
      assert_raises(Leveret::DecodeError, text.inspect) { parse(text) }
    end
  end

  def test_a_slash_inside_a_string_is_fine
    assert_equal({ "url" => "http://x/y", "q" => "a\"/b" }, parse('{"url": "http://x/y", "q": "a\"/b"}'))
  end

  def test_deep_nesting_is_an_error_not_a_crash
    assert_raises(Leveret::DecodeError) { parse(("[" * 10_000) + ("]" * 10_000)) }
  end
end
