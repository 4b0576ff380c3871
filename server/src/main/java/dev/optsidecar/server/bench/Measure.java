package dev.optsidecar.server.bench;

import java.util.Arrays;
import java.util.Locale;
import java.util.function.DoubleSupplier;

/** Interleaved timing, medians and the heap check shared by both tables. */
final class Measure {
    private Measure() {}

    /**
     * Times {@code a} and {@code b} alternately, swapping which goes first every iteration, so that
     * noise from a shared machine lands on both; returns the median milliseconds of each.
     */
    static double[] interleaved(int warmup, int iterations, DoubleSupplier a, DoubleSupplier b) {
        for (int i = 0; i < warmup; i++) {
            a.getAsDouble();
            b.getAsDouble();
        }
        double[] ta = new double[iterations];
        double[] tb = new double[iterations];
        for (int i = 0; i < iterations; i++) {
            if (i % 2 == 0) {
                ta[i] = a.getAsDouble();
                tb[i] = b.getAsDouble();
            } else {
                tb[i] = b.getAsDouble();
                ta[i] = a.getAsDouble();
            }
        }
        return new double[] {median(ta), median(tb)};
    }

    static double median(double[] values) {
        double[] sorted = values.clone();
        Arrays.sort(sorted);
        int mid = sorted.length / 2;
        return sorted.length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    /**
     * Why {@code bytes} more would not fit in the heap, or null if they would (with a tenth spare
     * for the garbage the transport makes). Collects first so that the previous size is gone.
     */
    static String heapShortfall(long bytes) {
        System.gc();
        Runtime rt = Runtime.getRuntime();
        long free = rt.maxMemory() - (rt.totalMemory() - rt.freeMemory());
        long need = bytes + bytes / 10 + (64L << 20);
        if (need <= free) {
            return null;
        }
        return String.format(Locale.ROOT, "skipped: needs ~%.1f GB of heap, %.1f GB free; run with java -Xmx8g -jar ...",
                need / 1e9, free / 1e9);
    }

    /** 1,000,000 as "1M", 1,500,000 as "1.5M", for table rows. */
    static String count(long n) {
        if (n >= 1_000_000) {
            return trim(n / 1e6) + "M";
        }
        return n >= 1_000 ? trim(n / 1e3) + "K" : Long.toString(n);
    }

    private static String trim(double v) {
        return v == Math.rint(v) ? Long.toString((long) v) : String.format(Locale.ROOT, "%.1f", v);
    }
}
