package dev.optsidecar.server.bench;

import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.server.fileutil.Channels;
import dev.optsidecar.server.fileutil.FileTrees;
import dev.optsidecar.server.snapshot.FileOut;
import dev.optsidecar.server.snapshot.Pending;
import dev.optsidecar.server.snapshot.SafetensorsFile;
import dev.optsidecar.server.snapshot.Snapshot;
import dev.optsidecar.server.snapshot.SnapshotStore;
import dev.optsidecar.server.snapshot.TensorOut;

import java.io.IOException;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * The snapshot table of the {@code bench} command: an Adam-like model (weights and two state
 * slots, in heap float arrays as the CPU engine holds them) written through {@link SnapshotStore}
 * and read back, each against a plain FileChannel copy of the same bytes in the same directory.
 * Ours and plain alternate which goes first; medians are reported.
 */
final class SnapshotBench {
    private static final int TENSORS_PER_SLOT = 4;
    private static final String MODEL = "bench";
    /** The size of the store's own streaming buffer, so that both sides copy in the same chunks. */
    private static final int BUFFER_BYTES = 1 << 20;

    private final Path dir;
    private final int warmup;
    private final int iterations;
    private final PrintStream out;

    /**
     * @param dir        an empty directory of its own, on the disk to measure; removed afterwards
     * @param warmup     unmeasured rounds first
     * @param iterations measured rounds
     */
    SnapshotBench(Path dir, int warmup, int iterations, PrintStream out) {
        this.dir = dir;
        this.warmup = warmup;
        this.iterations = iterations;
        this.out = out;
    }

    /** Bytes of heap the arrays for {@code params} parameters take. */
    static long heapBytes(long params) {
        return 3L * Float.BYTES * params;
    }

    void run(long params) throws IOException {
        // Weights, exp_avg, exp_avg_sq: each split over a few tensors.
        Map<String, float[]> weights = new LinkedHashMap<>();
        Map<String, float[]> state = new LinkedHashMap<>();
        int pieces = (int) Math.min(TENSORS_PER_SLOT, params);
        for (int i = 0; i < pieces; i++) {
            long n = params / pieces + (i == pieces - 1 ? params % pieces : 0);
            if (n > Integer.MAX_VALUE - 8) {
                throw new IllegalArgumentException("too many parameters for " + pieces + " tensors per slot");
            }
            String key = "layers." + i + ".weight";
            weights.put(key, filled((int) n, i));
            state.put(key + ".exp_avg", filled((int) n, 10 + i));
            state.put(key + ".exp_avg_sq", filled((int) n, 20 + i));
        }
        List<float[]> all = new ArrayList<>(weights.values());
        all.addAll(state.values());
        long bytes = heapBytes(params);
        List<FileOut> files = List.of(fileOut("weights.safetensors", weights), fileOut("state.safetensors", state));
        Map<String, float[]> byKey = new LinkedHashMap<>(weights);
        byKey.putAll(state);
        ObjectNode meta = JsonNodeFactory.instance.objectNode().put("algorithm", "Adam").put("bench", true);

        out.printf(Locale.ROOT, "%nSnapshots: %s params as weights + exp_avg + exp_avg_sq (%.2f GB of float32 in %d tensors,"
                        + " 2 files), medians of %d rounds after %d warmup, ours and plain alternating%n",
                count(params), bytes / 1e9, all.size(), iterations, warmup);
        out.println("  ours:  stage = stream every tensor through a 1 MiB direct buffer into .tmp-<id>, CRC32C on the way;"
                + " commit = fsync files, manifest, directories, atomic rename, retention (keep 2)");
        out.println("  plain: the same bytes from the same arrays through a 1 MiB direct buffer into one new file,"
                + " force(true); the file from two rounds back deleted");
        out.println("  reads: ours = open (size + CRC32C pass over every file) then readAll into the arrays;"
                + " plain = one read pass (no copy), then one read pass copying into the arrays");
        out.println("  reads come from the page cache where the files just written are still in it: they measure"
                + " CPU and memory, not the disk");
        out.println("  on a shared or virtual disk single rounds can vary several-fold; raise --snapshot-iterations"
                + " for steadier medians");

        SnapshotStore store = new SnapshotStore(dir.resolve("store"), 2);
        Deque<Path> plainFiles = new ArrayDeque<>();
        ByteBuffer buf = ByteBuffer.allocateDirect(BUFFER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
        int rounds = warmup + iterations;
        double[][] t = new double[10][iterations];
        try {
            for (int r = 0; r < rounds; r++) {
                double[] ours = new double[4];
                double[] plain = new double[5];
                Runnable oursRound = () -> {
                    try {
                        long t0 = System.nanoTime();
                        Pending p = store.stage(MODEL, "bench", 1, meta, files);
                        long t1 = System.nanoTime();
                        String id = store.commit(p).getId();
                        long t2 = System.nanoTime();
                        Snapshot s = store.open(MODEL, id);
                        long t3 = System.nanoTime();
                        for (String name : s.fileNames()) {
                            SafetensorsFile f = s.file(name);
                            for (String key : f.tensors().keySet()) {
                                float[] dst = byKey.get(key);
                                f.readAll(key, (offset, src) ->
                                        src.asFloatBuffer().get(dst, (int) offset, src.remaining() / Float.BYTES));
                            }
                        }
                        long t4 = System.nanoTime();
                        ours[0] = ms(t0, t1);
                        ours[1] = ms(t0, t2);
                        ours[2] = ms(t2, t3);
                        ours[3] = ms(t2, t4);
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                };
                int round = r;
                Runnable plainRound = () -> {
                    try {
                        Path p = dir.resolve("plain-" + round + ".bin");
                        long t0 = System.nanoTime();
                        long t1;
                        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                            for (float[] a : all) {
                                for (int off = 0; off < a.length; ) {
                                    int n = Math.min(BUFFER_BYTES / Float.BYTES, a.length - off);
                                    buf.clear();
                                    buf.asFloatBuffer().put(a, off, n);
                                    buf.limit(n * Float.BYTES);
                                    Channels.writeFully(ch, buf);
                                    off += n;
                                }
                            }
                            t1 = System.nanoTime();
                            ch.force(true);
                        }
                        plainFiles.addLast(p);
                        while (plainFiles.size() > 2) {
                            Files.delete(plainFiles.removeFirst());
                        }
                        long t2 = System.nanoTime();
                        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.READ)) {
                            while (ch.read(buf.clear()) >= 0) {
                                // A pass over the bytes, nothing kept.
                            }
                        }
                        long t3 = System.nanoTime();
                        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.READ)) {
                            long position = 0;
                            for (float[] a : all) {
                                for (int off = 0; off < a.length; ) {
                                    int n = Math.min(BUFFER_BYTES / Float.BYTES, a.length - off);
                                    buf.clear().limit(n * Float.BYTES);
                                    Channels.readFully(ch, buf, position);
                                    buf.flip();
                                    buf.asFloatBuffer().get(a, off, n);
                                    position += (long) n * Float.BYTES;
                                    off += n;
                                }
                            }
                        }
                        long t4 = System.nanoTime();
                        plain[0] = ms(t0, t1);
                        plain[1] = ms(t0, t2);
                        plain[2] = ms(t2, t3);
                        plain[3] = ms(t2, t3) + ms(t3, t4);
                        plain[4] = ms(t3, t4);
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                };
                if (r % 2 == 0) {
                    oursRound.run();
                    plainRound.run();
                } else {
                    plainRound.run();
                    oursRound.run();
                }
                if (r >= warmup) {
                    int i = r - warmup;
                    t[0][i] = ours[0];
                    t[1][i] = plain[0];
                    t[2][i] = ours[1];
                    t[3][i] = plain[1];
                    t[4][i] = ours[2];
                    t[5][i] = plain[2];
                    t[6][i] = ours[3] - ours[2];
                    t[7][i] = plain[4];
                    t[8][i] = ours[3];
                    t[9][i] = plain[3];
                }
            }
        } catch (UncheckedIOException e) {
            throw e.getCause();
        } finally {
            FileTrees.delete(dir);
        }

        String format = "%-34s  %8s  %9s  %9s  %9s  %10s  %10s%n";
        out.printf(Locale.ROOT, format, "operation (ours | plain)", "bytes", "ours ms", "plain ms", "ours GB/s",
                "plain GB/s", "plain/ours");
        String[] rows = {
            "stage, no fsync | write",
            "stage + commit | write + force",
            "open: verify | read pass",
            "readAll after open | read + copy",
            "open + readAll | read + read+copy",
        };
        for (int row = 0; row < rows.length; row++) {
            double o = Measure.median(t[2 * row]);
            double p = Measure.median(t[2 * row + 1]);
            out.printf(Locale.ROOT, "%-34s  %8s  %9.1f  %9.1f  %9.2f  %10.2f  %10.3f%n", rows[row],
                    String.format(Locale.ROOT, "%.2fG", bytes / 1e9), o, p, bytes / 1e9 / (o / 1e3),
                    bytes / 1e9 / (p / 1e3), p / o);
        }
    }

    private static FileOut fileOut(String name, Map<String, float[]> tensors) {
        List<TensorOut> outs = new ArrayList<>();
        tensors.forEach((key, a) -> outs.add(new TensorOut(key, new long[] {a.length}, (offset, count, dst) -> {
            dst.asFloatBuffer().put(a, (int) offset, count);
            dst.position(dst.position() + count * Float.BYTES);
        })));
        return new FileOut(name, Map.of(), outs);
    }

    private static float[] filled(int n, int seed) {
        float[] a = new float[n];
        float x = seed * 0.001f;
        for (int i = 0; i < n; i++) {
            a[i] = x + i * 1e-7f;
        }
        return a;
    }

    private static double ms(long from, long to) {
        return (to - from) / 1e6;
    }

    private static String count(long n) {
        return n % 1_000_000 == 0 ? n / 1_000_000 + "M" : n % 1_000 == 0 ? n / 1_000 + "K" : Long.toString(n);
    }
}
