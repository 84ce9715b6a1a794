# frozen_string_literal: true

# ruby -Ilib -Itest test/run_all.rb   (from consumers/ruby/)
Dir[File.join(__dir__, "*_test.rb")].sort.each { |file| require file }
