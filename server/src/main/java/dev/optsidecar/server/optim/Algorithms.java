package dev.optsidecar.server.optim;

import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;

/** The algorithms the server knows, by the names clients use. */
public final class Algorithms {
    private static final Map<String, AlgorithmDefinition> BY_NAME = new LinkedHashMap<>();
    /** Lookahead is not an algorithm here but a wrapper: OptimizerConfig.lookahead. */
    private static final Set<String> WRAPPERS = Set.of("Lookahead");

    static {
        for (AlgorithmDefinition d : new AlgorithmDefinition[] {
                Sgd.DEFINITION, Adam.ADAM, Adam.ADAMW, RAdam.TORCH, RAdam.TORCH_2X, RAdamOriginal.DEFINITION,
                SgdScheduleFree.DEFINITION, AdamWScheduleFree.DEFINITION, RAdamScheduleFree.DEFINITION}) {
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
        if (WRAPPERS.contains(name)) {
            throw OptError.invalid("%s: %s wraps an algorithm: name the inner algorithm here and configure"
                    + " spec.optimizer.lookahead", field, name);
        }
        throw OptError.invalid("%s: unknown algorithm '%s' (known: %s)", field, Echo.of(name),
                String.join(", ", BY_NAME.keySet()));
    }

    public static Set<String> names() {
        return BY_NAME.keySet();
    }
}
