package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.server.fileutil.FileTrees;
import dev.optsidecar.server.fileutil.Fsync;

import java.io.IOException;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Exported weights under {@code exports/}: for serving and evaluation, never restored. Each export
 * is one safetensors file with a JSON sidecar beside it.
 */
final class Exports {
    static final String FORMAT = "optsidecar-export";
    /** Keeps the temporary names of concurrent exports apart. */
    private static final AtomicLong SEQUENCE = new AtomicLong();

    private final Path root;

    Exports(Path root) {
        this.root = root;
    }

    /**
     * Writes {@code file}'s tensors as {@code exports/<model-dir>/v<version>-<view>.safetensors}
     * (atomically, replacing an earlier export of the same version and view) with a JSON sidecar
     * beside it. {@code file}'s name is ignored; its metadata is kept, under the export's own keys.
     */
    ExportInfo export(String model, long version, View label, FileOut file) throws IOException {
        String view = viewLabel(label);
        String dirName = ModelNames.encode(model);
        Path exports = root.resolve(ModelNames.EXPORTS);
        Fsync.createDir(exports);
        Path dir = exports.resolve(dirName);
        Fsync.createDir(dir);
        String name = "v" + Long.toUnsignedString(version) + "-" + view + ".safetensors";
        Map<String, String> metadata = new LinkedHashMap<>(file.metadata());
        metadata.put("format", FORMAT);
        metadata.put("resumable", "false");
        metadata.put("model", model);
        metadata.put("version", Long.toUnsignedString(version));
        metadata.put("view", view);

        Path target = dir.resolve(name);
        Path temp = dir.resolve(SnapshotFiles.TMP_PREFIX + SEQUENCE.incrementAndGet() + "-" + name);
        Path sidecarTarget = dir.resolve(name + ".json");
        Path sidecarTemp = dir.resolve(temp.getFileName() + ".json");
        SafetensorsWriter.Written w;
        ByteBuffer buf = IoBuffers.take();
        try {
            try (FileChannel ch = FileChannel.open(temp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                w = SafetensorsWriter.write(ch, metadata, file.tensors(), buf);
                ch.force(true);
            }
            ObjectNode sidecar = Json.MAPPER.createObjectNode();
            sidecar.put("kind", "export");
            sidecar.put("resumable", false);
            sidecar.put("model", model);
            sidecar.put("version", version);
            sidecar.put("view", view);
            sidecar.put("bytes", w.bytes());
            sidecar.put("crc32c", Json.hex(w.crc32c()));
            Fsync.write(sidecarTemp, Json.PRETTY.writeValueAsBytes(sidecar));
            Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE);
            Fsync.rename(sidecarTemp, sidecarTarget);
        } catch (IOException | RuntimeException | Error e) {
            FileTrees.deleteQuietly(temp);
            FileTrees.deleteQuietly(sidecarTemp);
            throw e;
        } finally {
            IoBuffers.give(buf);
        }
        return ExportInfo.newBuilder()
                .setModel(model)
                .setVersion(version)
                .setView(label)
                .setPath(ModelNames.EXPORTS + "/" + dirName + "/" + name)
                .setBytes(w.bytes())
                .build();
    }

    /**
     * A view's label in file names: {@code train}, {@code eval}, {@code slow}, {@code ema-<decay>}
     * (e.g. {@code ema-0.999}) or {@code slot-<name>}. Rejects unspecified and none.
     */
    static String viewLabel(View view) {
        return switch (view.getKind()) {
            case VIEW_TRAIN -> "train";
            case VIEW_EVAL -> "eval";
            case VIEW_SLOW -> "slow";
            case VIEW_EMA -> view.getEmaDecay() == 0 ? "ema"
                    : "ema-" + BigDecimal.valueOf(view.getEmaDecay()).stripTrailingZeros().toPlainString();
            case VIEW_SLOT -> {
                if (view.getSlot().isEmpty()) {
                    throw new IllegalArgumentException("a slot view needs the slot's name");
                }
                yield "slot-" + ModelNames.encode(view.getSlot());
            }
            default -> throw new IllegalArgumentException("cannot export view " + view.getKind());
        };
    }
}
