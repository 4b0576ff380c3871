package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.zip.CRC32C;

import static dev.optsidecar.server.snapshot.SnapshotFixtures.B;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.JSON;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.W;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.entries;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Exported weights and their sidecars. */
class ExportsTest {
    @TempDir
    Path root;

    @Test
    void exportWritesSafetensorsAndSidecar() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 5);
        View ema = View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(0.999).build();
        FileOut weights = new FileOut("ignored.safetensors", Map.of("architecture", "mlp", "model", "overridden"),
                List.of(Tensors.of("w", W, 500, 600), Tensors.of("b", B, 17)));
        ExportInfo info = store.export("org/net", 1200, ema, weights);
        assertEquals("org/net", info.getModel());
        assertEquals(1200, info.getVersion());
        assertEquals(ema, info.getView());
        assertEquals("exports/org%2Fnet/v1200-ema-0.999.safetensors", info.getPath());
        Path file = root.resolve(info.getPath());
        assertEquals(Files.size(file), info.getBytes());
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(Map.of("architecture", "mlp", "format", "optsidecar-export", "resumable", "false",
                    "model", "org/net", "version", "1200", "view", "ema-0.999"), f.metadata());
            Tensors.assertBitExact(W, new Tensors.Collected(f, "w").values);
            Tensors.assertBitExact(B, new Tensors.Collected(f, "b").values);
        }
        JsonNode sidecar = JSON.readTree(root.resolve(info.getPath() + ".json").toFile());
        CRC32C crc = new CRC32C();
        crc.update(Files.readAllBytes(file));
        JsonNode expected = JSON.readTree("{\"kind\": \"export\", \"resumable\": false, \"model\": \"org/net\","
                + " \"version\": 1200, \"view\": \"ema-0.999\", \"bytes\": " + Files.size(file)
                + ", \"crc32c\": \"" + String.format("%08x", crc.getValue()) + "\"}");
        assertEquals(expected, sidecar);

        // Same version and view again: replaced in place, no temporary files left.
        ExportInfo again = store.export("org/net", 1200, ema,
                new FileOut("x", Map.of(), List.of(Tensors.of("b", B, 17))));
        assertEquals(info.getPath(), again.getPath());
        assertEquals(Files.size(file), again.getBytes());
        assertTrue(again.getBytes() < info.getBytes());
        store.export("org/net", 1300, View.newBuilder().setKind(ViewKind.VIEW_EVAL).build(),
                new FileOut("x", Map.of(), List.of(Tensors.of("b", B, 17))));
        assertEquals(Set.of("v1200-ema-0.999.safetensors", "v1200-ema-0.999.safetensors.json",
                "v1300-eval.safetensors", "v1300-eval.safetensors.json"), entries(file.getParent()));
        assertEquals(List.of(), store.models(), "exports are not snapshots");
        assertEquals(List.of(), store.listAll());
        assertThrows(IllegalArgumentException.class, () -> store.export("org/net", 1,
                View.newBuilder().setKind(ViewKind.VIEW_NONE).build(), weights));
    }

    @Test
    void viewLabels() {
        assertEquals("train", Exports.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build()));
        assertEquals("eval", Exports.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_EVAL).build()));
        assertEquals("slow", Exports.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_SLOW).build()));
        assertEquals("ema-0.9999",
                Exports.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(0.9999).build()));
        assertEquals("ema-0.5",
                Exports.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(0.5).build()));
        assertEquals("slot-exp_avg",
                Exports.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot("exp_avg").build()));
        assertThrows(IllegalArgumentException.class,
                () -> Exports.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_KIND_UNSPECIFIED).build()));
    }
}
