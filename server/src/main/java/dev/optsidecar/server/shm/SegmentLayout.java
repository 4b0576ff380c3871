package dev.optsidecar.server.shm;

import dev.optsidecar.proto.v1.SharedSegment;
import dev.optsidecar.server.OptError;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

/**
 * Where each tensor's weights and gradient lie in a segment: one region of numel × 4 bytes each,
 * 8-byte aligned and none overlapping another. Checked against the model before the file is opened.
 */
public final class SegmentLayout {
    static final int ALIGNMENT = 8;

    private final long[] weights;
    private final long[] gradients;
    private final long[] numels;
    /** One past the last byte any region uses. */
    private final long end;

    private SegmentLayout(long[] weights, long[] gradients, long[] numels, long end) {
        this.weights = weights;
        this.gradients = gradients;
        this.numels = numels;
        this.end = end;
    }

    /**
     * The layout {@code segment} gives for tensors of {@code numels} elements; INVALID_ARGUMENT naming
     * the offending field for a wrong count, a misaligned offset or overlapping regions.
     */
    static SegmentLayout of(SharedSegment segment, long[] numels, String field) {
        long[] weights = offsets(segment.getWeightsOffsetsList(), numels.length, field + ".weights_offsets");
        long[] gradients = offsets(segment.getGradientOffsetsList(), numels.length, field + ".gradient_offsets");
        record Region(long start, long end, String what) {}
        List<Region> regions = new ArrayList<>(2 * numels.length);
        long end = 0;
        for (int i = 0; i < numels.length; i++) {
            long bytes = numels[i] * Float.BYTES;
            for (int kind = 0; kind < 2; kind++) {
                long start = kind == 0 ? weights[i] : gradients[i];
                String what = (kind == 0 ? "weights_offsets" : "gradient_offsets") + "[" + i + "]";
                if (Long.compareUnsigned(start, Long.MAX_VALUE - bytes) > 0) {
                    throw OptError.invalid("%s.%s: offset %s is past any file", field, what,
                            Long.toUnsignedString(start)).withField(field + "." + what);
                }
                regions.add(new Region(start, start + bytes, what));
                end = Math.max(end, start + bytes);
            }
        }
        regions.sort(Comparator.comparingLong(Region::start));
        Region previous = null;
        for (Region r : regions) {
            if (r.start == r.end) {
                continue;
            }
            if (previous != null && r.start < previous.end) {
                throw OptError.invalid("%s: %s (bytes [%d, %d)) overlaps %s (bytes [%d, %d))", field, r.what,
                        r.start, r.end, previous.what, previous.start, previous.end).withField(field + "." + r.what);
            }
            previous = r;
        }
        return new SegmentLayout(weights, gradients, numels, end);
    }

    private static long[] offsets(List<Long> given, int tensors, String field) {
        if (given.size() != tensors) {
            throw OptError.invalid("%s: %d offsets for a model of %d tensors", field, given.size(), tensors)
                    .withField(field);
        }
        long[] offsets = new long[tensors];
        for (int i = 0; i < tensors; i++) {
            offsets[i] = given.get(i);
            if (offsets[i] % ALIGNMENT != 0) {
                throw OptError.invalid("%s[%d]: offset %s is not a multiple of %d", field, i,
                        Long.toUnsignedString(offsets[i]), ALIGNMENT).withField(field);
            }
        }
        return offsets;
    }

    /** Bytes the file must hold at least. */
    long end() {
        return end;
    }

    public int tensors() {
        return numels.length;
    }

    public long numel(int tensor) {
        return numels[tensor];
    }

    long weights(int tensor) {
        return weights[tensor];
    }

    long gradient(int tensor) {
        return gradients[tensor];
    }
}
