package dev.optsidecar.server.model;

import java.util.Map;
import java.util.TreeMap;

/**
 * Which elements of one tensor have arrived: a set of disjoint [start, end) ranges, merged as they
 * touch, so chunks sent in order keep it at one entry.
 */
final class Coverage {
    private final long numel;
    private final TreeMap<Long, Long> ranges = new TreeMap<>();
    private long covered;

    Coverage(long numel) {
        this.numel = numel;
    }

    /** True if [start, end) shares an element with a range already added. */
    boolean overlaps(long start, long end) {
        Map.Entry<Long, Long> before = ranges.floorEntry(start);
        if (before != null && before.getValue() > start) {
            return true;
        }
        Map.Entry<Long, Long> after = ranges.higherEntry(start);
        return after != null && after.getKey() < end;
    }

    /** Adds [start, end), which must not overlap. */
    void add(long start, long end) {
        long s = start;
        long e = end;
        Map.Entry<Long, Long> before = ranges.floorEntry(start);
        if (before != null && before.getValue() == start) {
            s = before.getKey();
            ranges.remove(before.getKey());
        }
        Long afterEnd = ranges.remove(end);
        if (afterEnd != null) {
            e = afterEnd;
        }
        ranges.put(s, e);
        covered += end - start;
    }

    long numel() {
        return numel;
    }

    boolean isComplete() {
        return covered == numel;
    }

    boolean isEmpty() {
        return covered == 0;
    }

    long missing() {
        return numel - covered;
    }

    /** The first element not yet covered, for error messages; numel if complete. */
    long firstMissing() {
        long at = 0;
        for (Map.Entry<Long, Long> r : ranges.entrySet()) {
            if (r.getKey() > at) {
                return at;
            }
            at = r.getValue();
        }
        return at;
    }
}
