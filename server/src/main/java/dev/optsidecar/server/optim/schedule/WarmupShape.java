package dev.optsidecar.server.optim.schedule;

import java.util.Arrays;
import java.util.List;

/** The rising part of WSD and WSD-S (algorithms.md §8.4), by the names hf {@code get_wsd_schedule} uses. */
public enum WarmupShape {
    LINEAR("linear"),
    COSINE("cosine"),
    ONE_SQRT("1-sqrt");

    private final String id;

    WarmupShape(String id) {
        this.id = id;
    }

    public String id() {
        return id;
    }

    static List<String> ids() {
        return Arrays.stream(values()).map(WarmupShape::id).toList();
    }

    static WarmupShape byId(String id) {
        return Arrays.stream(values()).filter(w -> w.id.equals(id)).findFirst().orElseThrow();
    }

    /** The multiplier at warmup progress q = s/max(1,W) in [0, 1), with floor m. */
    double factor(double q, double m) {
        double factor = switch (this) {
            case LINEAR -> q;                              // q
            case COSINE -> 0.5 * (1 - Math.cos(Math.PI * q)); // ½(1 − cos πq)
            case ONE_SQRT -> 1 - Math.sqrt(1 - q);         // 1 − sqrt(1 − q)
        };
        return Math.max(0, factor * (1 - m) + m);          // f = max(0, factor·(1−m) + m)
    }
}
