from env import write_file

tasks = [write_file(text=f"hello{i}", name=f"out{i}.txt") for i in range(3)]
