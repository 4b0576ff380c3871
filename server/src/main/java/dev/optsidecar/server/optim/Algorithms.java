package dev.optsidecar.server.optim;

import dev.optsidecar.server.OptError;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;

/** The algorithms the server knows, by the names clients use. */
public final class Algorithms {
    private static final Map<String, AlgorithmDefinition> BY_NAME = new LinkedHashMap<>();
    /** Names the protocol reserves for algorithms this server version does not run yet. */
    private static final Set<String> PLANNED =
            Set.of("SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree", "Lookahead");

    static {
        for (AlgorithmDefinition d : new AlgorithmDefinition[] {
                Sgd.DEFINITION, Adam.ADAM, Adam.ADAMW, RAdam.TORCH, RAdam.TORCH_2X, RAdamOriginal.DEFINITION}) {
            BY_NAME.put(d.name(), d);
        }
    }

    private Algorithms() {}

    /** The definition for {@code name}; INVALID_ARGUMENT naming {@code field} if there is none. */
    public static AlgorithmDefinition byName(String name, String field) {
        AlgorithmDefinition d = BY_NAME.get(name);
        if (d != null) {
            return d;
        }
        if (PLANNED.contains(name)) {
            throw OptError.unimplemented("%s: algorithm %s is not implemented by this server yet", field, name);
        }
        throw OptError.invalid("%s: unknown algorithm '%s' (known: %s)", field, name,
                String.join(", ", BY_NAME.keySet()));
    }

    public static Set<String> names() {
        return BY_NAME.keySet();
    }
}
