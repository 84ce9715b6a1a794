# frozen_string_literal: true

require "json"
require "set" # json_schemer 0.2 uses Set without requiring it (Ruby 3.1 does not autoload it)
require "json_schemer"

module Leveret
  # The JSON Schema files of schemas/, indexed by message type and version.
  #
  # Each file is draft-07 and carries `x-leveret-type` and `x-leveret-version`;
  # json_schemer ignores those annotations, as it ignores every keyword it does
  # not know.
  class Schemas
    MAX_ERRORS_SHOWN = 3

    # leveret's Python models are strict: 1.0 is not an integer there, although
    # draft-07 says it is. The same body must get the same verdict in every
    # language, so a JSON float never satisfies "type": "integer" here either.
    STRICT_INTEGER = lambda do |data, schema, _pointer|
      types = Array(schema["type"])
      !(data.is_a?(Float) && types.include?("integer") && !types.include?("number"))
    end

    # Load every *.json file of a directory.
    #
    # @raise [ConfigurationError] no such directory, or a file without the annotations
    def self.load(dir)
      raise ConfigurationError, "schema directory #{dir} does not exist" unless File.directory?(dir)

      new(Dir[File.join(dir, "*.json")].sort.to_h do |path|
        schema = JSON.parse(File.read(path))
        type = schema["x-leveret-type"]
        version = schema["x-leveret-version"]
        unless type.is_a?(String) && version.is_a?(Integer)
          raise ConfigurationError, "#{path} lacks x-leveret-type or an integer x-leveret-version"
        end

        expected = "#{type}.v#{version}.json"
        raise ConfigurationError, "#{path} describes #{type} v#{version}; name it #{expected}" unless File.basename(path) == expected

        [[type, version], schema]
      end)
    end

    # @param schemas [Hash{Array(String, Integer) => Hash}] parsed schemas by [type, version]
    def initialize(schemas)
      @schemas = schemas.freeze
      @validators = schemas.to_h do |key, schema|
        [key, JSONSchemer.schema(schema, keywords: { "type" => STRICT_INTEGER })]
      end.freeze
    end

    def known?(type, version) = @schemas.key?([type, version])

    def versions(type) = @schemas.keys.select { |t, _| t == type }.map(&:last).sort

    def types = @schemas.keys.map(&:first).uniq.sort

    # The schema of one type and version.
    def fetch(type, version)
      @schemas.fetch([type, version]) { raise ConfigurationError, "no schema for #{type} v#{version}" }
    end

    # Validate a decoded JSON value.
    #
    # @raise [SchemaViolation] with a one-line summary of the first errors
    def validate!(type, version, payload)
      validator = @validators.fetch([type, version]) { raise ConfigurationError, "no schema for #{type} v#{version}" }
      errors = validator.validate(payload).first(MAX_ERRORS_SHOWN + 1)
      return payload if errors.empty?

      parts = errors.first(MAX_ERRORS_SHOWN).map { |e| describe(e) }
      parts << "and more" if errors.size > MAX_ERRORS_SHOWN
      raise SchemaViolation, "#{type} v#{version}: #{parts.uniq.join('; ')}"
    end

    def valid?(type, version, payload)
      validate!(type, version, payload)
      true
    rescue SchemaViolation
      false
    end

    private

    def describe(error)
      where = error["data_pointer"].to_s.empty? ? "(body)" : error["data_pointer"].delete_prefix("/").tr("/", ".")
      schema = error["schema"].is_a?(Hash) ? error["schema"] : {}
      what =
        case error["type"]
        when "required" then "missing #{Array(error.dig('details', 'missing_keys')).join(', ')}"
        when "enum" then "must be one of #{schema['enum'].inspect}"
        when "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"
          "must respect #{error['type']} #{schema[error['type']]}"
        when "exclusiveMinimum", "exclusiveMaximum" then "must respect #{error['type']} #{schema[error['type']]}"
        when "type" then "must be #{Array(schema['type']).join(' or ')}"
        when "null", "boolean", "number", "integer", "string", "array", "object" then "must be #{error['type']}"
        when "anyOf", "oneOf" then "matches none of the allowed forms"
        else "fails #{error['type']}"
        end
      "#{where}: #{what}"
    end
  end
end
