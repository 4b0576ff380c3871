package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.Parallel;
import dev.optsidecar.server.engine.SegmentStepper;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import java.util.concurrent.Executor;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.zip.CRC32C;

/**
 * The CPU engine's step from a segment ({@link SegmentStepper}): each piece is one native pass
 * ({@link SegmentStepKernel}) from the segment and the current buffers into the spares and the
 * segment's weights, which also takes the CRC-32C of the weights it writes. The spares become
 * the tensors' buffers only when every piece has passed.
 */
final class CpuSegmentStepper implements SegmentStepper {
    @Override
    public boolean supports(List<TensorProgram> programs) {
        if (!SegmentStepKernel.VECTORISED) {
            return false;
        }
        for (TensorProgram p : programs) {
            if (!(p.tensor() instanceof CpuTensor) || p.calls().size() != 1
                    || !SegmentStepKernel.supports(p.calls().get(0))) {
                return false;
            }
        }
        return true;
    }

    @Override
    public long spareBytes(long numel, int slots) {
        return Math.multiplyExact(Math.multiplyExact(numel, (long) Float.BYTES), 1L + slots);
    }

    @Override
    public Applied run(List<TensorProgram> programs, List<Piece> pieces, PieceViews views, Executor helpers,
                       int threads) {
        if (!supports(programs)) {
            throw new IllegalArgumentException("programs this stepper does not run: " + programs);
        }
        for (TensorProgram p : programs) {
            ((CpuTensor) p.tensor()).allocateSpares();
        }
        int[] outcome = new int[pieces.size()];
        java.util.Arrays.fill(outcome, -1); // not run
        int[] crc32c = new int[pieces.size()];
        double[] sums = new double[pieces.size()];
        AtomicBoolean refused = new AtomicBoolean();
        try {
            runPieces(programs, pieces, views, helpers, threads, outcome, crc32c, sums, refused);
        } catch (RuntimeException | Error e) { // the segment goes back as the trainer left it, whatever failed
            restore(programs, pieces, views, outcome);
            throw e;
        }
        if (refused.get()) {
            restore(programs, pieces, views, outcome);
            return null;
        }
        for (TensorProgram p : programs) {
            ((CpuTensor) p.tensor()).swapSpares();
        }
        double sumOfSquares = 0;
        for (double s : sums) {
            sumOfSquares += s; // in piece order, as the copying path folds its pieces
        }
        return new Applied(sumOfSquares, crc32c);
    }

    /** Every piece on up to {@code threads} threads, until one is refused; each piece's outcome, CRC and sum. */
    private static void runPieces(List<TensorProgram> programs, List<Piece> pieces, PieceViews views,
                                  Executor helpers, int threads, int[] outcome, int[] crc32c, double[] sums,
                                  AtomicBoolean refused) {
        Parallel.forEach(pieces.size(), threads, helpers, i -> {
            if (refused.get()) {
                return; // the step is refused: the pieces left need neither running nor undoing
            }
            Piece piece = pieces.get(i);
            TensorProgram program = programs.get(piece.program());
            ByteBuffer weights = views.weights(piece);
            double[] lanes = new double[JavaLoops.SUM_LANES];
            int[] crc = new int[2];
            int result = step((CpuTensor) program.tensor(), program.calls().get(0), piece, views.gradient(piece),
                    weights, lanes, crc);
            outcome[i] = result;
            if (result != SegmentStepKernel.APPLIED) {
                refused.set(true);
                return;
            }
            crc32c[i] = crc[1] == 1 ? crc[0] : crc32c(weights);
            sums[i] = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        });
    }

    /** One piece, block by block (a piece may span blocks where blocks are small). */
    private static int step(CpuTensor t, KernelCall call, Piece piece, ByteBuffer gradient, ByteBuffer weights,
                            double[] lanes, int[] crc) {
        int m = call.slot("exp_avg");
        int v = call.slot("exp_avg_sq");
        long at = piece.offset();
        long end = at + piece.count();
        while (at < end) {
            int b = t.blockOf(at);
            int from = t.indexInBlock(at);
            int to = (int) Math.min(t.blockLength(b), from + (end - at));
            long byteOffset = (at - piece.offset()) * Float.BYTES;
            float[][] slots = t.stateBlock(b);
            int result = SegmentStepKernel.run(gradient, byteOffset, weights, byteOffset, t.paramBlock(b), slots[m],
                    slots[v], t.spareParamBlock(b), t.spareSlotBlock(m, b), t.spareSlotBlock(v, b), from, to, call,
                    lanes, crc);
            if (result != SegmentStepKernel.APPLIED) {
                if (at > piece.offset()) { // the blocks of this piece already done
                    putBack(t, piece.offset(), (int) (at - piece.offset()), weights);
                }
                return result;
            }
            at += to - from;
        }
        return SegmentStepKernel.APPLIED;
    }

    /** The CRC-32C of the weights a piece wrote, where the kernel could not take it on the way. */
    private static int crc32c(ByteBuffer weights) {
        CRC32C crc = new CRC32C();
        crc.update(weights.duplicate());
        return (int) crc.getValue();
    }

    /**
     * Puts the model's weights back into the segment where applied pieces replaced them: they were
     * the same bits before (the pass checked), so the segment is as the trainer left it.
     */
    private static void restore(List<TensorProgram> programs, List<Piece> pieces, PieceViews views, int[] outcome) {
        for (int i = 0; i < pieces.size(); i++) {
            if (outcome[i] == SegmentStepKernel.APPLIED) {
                Piece piece = pieces.get(i);
                putBack((CpuTensor) programs.get(piece.program()).tensor(), piece.offset(), piece.count(),
                        views.weights(piece));
            }
        }
    }

    /** Writes the tensor's weights [offset, offset + count) into {@code weights} from its start. */
    private static void putBack(CpuTensor t, long offset, int count, ByteBuffer weights) {
        ByteBuffer bytes = ByteBuffer.allocate(count * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        t.readParams(offset, count, bytes);
        bytes.flip();
        weights.duplicate().put(bytes);
    }
}
