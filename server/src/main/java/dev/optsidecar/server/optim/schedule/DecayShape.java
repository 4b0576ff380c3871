package dev.optsidecar.server.optim.schedule;

import java.util.Arrays;
import java.util.List;

/** The falling part of WSD and WSD-S (algorithms.md §8.4 and §8.5). */
public enum DecayShape {
    LINEAR("linear"),
    COSINE("cosine"),
    ONE_SQRT("1-sqrt"),
    /** Wen et al.'s shape; it runs from 1 to m itself, so it needs m > 0 and takes no extra floor. */
    INVERSE_PROPORTIONAL("inverse_proportional");

    /** hf's cosine decay parameter; §8.4 fixes it at 0.5 (half a cosine period). */
    private static final double CYCLES = 0.5;

    private final String id;

    DecayShape(String id) {
        this.id = id;
    }

    public String id() {
        return id;
    }

    static List<String> ids() {
        return Arrays.stream(values()).map(DecayShape::id).toList();
    }

    static DecayShape byId(String id) {
        return Arrays.stream(values()).filter(d -> d.id.equals(id)).findFirst().orElseThrow();
    }

    /** The multiplier at decay progress q = (steps into the window)/max(1,D) in [0, 1), with floor m. */
    double factor(double q, double m) {
        double shape = switch (this) {
            case LINEAR -> 1 - q;                                         // 1 − q
            case COSINE -> 0.5 * (1 + Math.cos(Math.PI * CYCLES * 2 * q)); // ½(1 + cos(2π·cycles·q))
            case ONE_SQRT -> 1 - Math.sqrt(q);                            // 1 − sqrt(q)
            case INVERSE_PROPORTIONAL -> 1 / (q * (1 / m - 1) + 1);       // 1/(q·(1/m − 1) + 1)
        };
        return this == INVERSE_PROPORTIONAL ? shape : Math.max(0, shape * (1 - m) + m); // max(0, shape·(1−m) + m)
    }
}
