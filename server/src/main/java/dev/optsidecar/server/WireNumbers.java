package dev.optsidecar.server;

/**
 * Numbers read from the wire. Protobuf's uint64 arrives as a Java long: 2^63 and above are
 * negative, and arithmetic on a count near 2^64 wraps. Counts the server adds to are held below
 * {@link #MAX_COUNT}, far beyond any real run, so that every sum and difference stays in range.
 */
public final class WireNumbers {
    /** 2^62: every count (versions, step counts, sequence numbers) stays below it. */
    public static final long MAX_COUNT = 1L << 62;

    private WireNumbers() {}

    /** {@code value}, a wire uint64, if it is below {@link #MAX_COUNT}; else INVALID_ARGUMENT naming {@code field}. */
    public static long count(long value, String field) {
        if (Long.compareUnsigned(value, MAX_COUNT) >= 0) {
            throw OptError.invalid("%s: %s is out of range (must be below 2^62)", field, Long.toUnsignedString(value));
        }
        return value;
    }
}
