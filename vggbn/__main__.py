from vggbn.cli import run

run()
