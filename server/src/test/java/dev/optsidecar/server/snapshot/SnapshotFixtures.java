package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.proto.v1.SnapshotInfo;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/** A small model's snapshot files and metadata, and what tests of the store look at on disk. */
public final class SnapshotFixtures {
    static final ObjectMapper JSON = new ObjectMapper();
    static final float[] W = Tensors.random(300_000, 11);    // 1.2 MB: two chunks
    static final float[] B = Tensors.random(17, 12);          // odd size
    static final float[] M = Tensors.random(300_000, 13);
    static final float[] V = Tensors.random(300_000, 14);
    static final float[] STEP = {1200f};

    private SnapshotFixtures() {}

    static List<FileOut> files(float scale) {
        float[] w = W.clone();
        for (int i = 0; i < w.length; i++) {
            w[i] *= scale;
        }
        return List.of(
                new FileOut("weights.safetensors", Map.of("kind", "weights"),
                        List.of(Tensors.of("w", w, 500, 600), Tensors.of("b", B, 17))),
                new FileOut("state.safetensors", Map.of("kind", "state"),
                        List.of(Tensors.of("w.exp_avg", M, 500, 600), Tensors.of("w.exp_avg_sq", V, 500, 600),
                                Tensors.of("step", STEP))));
    }

    static JsonNode meta(String model) {
        ObjectNode n = JSON.createObjectNode();
        n.put("algorithm", "RAdam");
        n.putArray("groups").addObject().put("lr", 0.001).put("name", model);
        n.put("unicode", "模型 ✓");
        return n;
    }

    /** Stages and commits a snapshot of {@code model} at {@code version}. */
    public static SnapshotInfo snapshot(SnapshotStore store, String model, long version) throws IOException {
        return store.commit(store.stage(model, "rpc", version, meta(model), files(version)));
    }

    public static List<String> ids(List<SnapshotInfo> infos) {
        return infos.stream().map(SnapshotInfo::getId).collect(Collectors.toList());
    }

    /** The names in a directory, sorted. */
    public static Set<String> entries(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).collect(Collectors.toCollection(TreeSet::new));
        }
    }
}
